//! Replays the committed fuzz corpus (`fuzz/corpus/<target>/`) through the
//! same harness functions as the fuzz targets, on the stable toolchain:
//! a finding that comes back fails this test (a panic in a harness).

use std::{fs, panic::catch_unwind, path::Path, time::Instant};

/// `QIO_FUZZ_FILE=<target>:<file> cargo test -p qio-fuzz-harness --test
/// replay` runs one input instead (an artifact to triage; add
/// `QIO_FUZZ_TRACE=1` to print it decoded).
fn replay_one(spec: &str) {
    let (name, file) = spec.split_once(':').expect("QIO_FUZZ_FILE=<target>:<file>");
    let (_, run) = qio_fuzz_harness::TARGETS
        .into_iter()
        .find(|(n, _)| *n == name)
        .unwrap_or_else(|| panic!("no target {name}"));
    run(&fs::read(file).unwrap_or_else(|e| panic!("{file}: {e}")));
}

#[test]
fn replay_fuzz_corpus() {
    if let Ok(spec) = std::env::var("QIO_FUZZ_FILE") {
        return replay_one(&spec);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../corpus");
    // One test, one thread: the harnesses share the main loop (the thread
    // that first runs one is its home) and count the process's fds.
    for (name, run) in qio_fuzz_harness::TARGETS {
        let dir = root.join(name);
        let mut files: Vec<_> = fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.expect("corpus entry").path())
            .collect();
        files.sort();
        let start = Instant::now();
        for f in &files {
            let data = fs::read(f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
            if catch_unwind(|| run(&data)).is_err() {
                panic!(
                    "{name}: {} fails (QIO_FUZZ_FILE={name}:{0} to run it alone)",
                    f.display()
                );
            }
        }
        assert!(
            !files.is_empty(),
            "no corpus for {name} in {}",
            dir.display()
        );
        eprintln!("{name}: {} inputs in {:?}", files.len(), start.elapsed());
    }
}
