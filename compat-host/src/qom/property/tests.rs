//! Tests of the property module.

use std::{
    cell::Cell as Shared,
    ffi::CString,
    mem::size_of,
    sync::{
        atomic::{AtomicUsize, Ordering::SeqCst},
        Once,
    },
};

use super::*;
use crate::{
    qom::{
        object::{object_new, object_ref, object_unref},
        types::type_register_static,
    },
    util::{
        g_strdup,
        testing::{abort_message, in_child},
    },
    visitor::{visit_type_int64, visit_type_uint64},
};

/// An object whose finalize and property releases log into `log`.
#[repr(C)]
struct TestObj {
    parent: sys::Object,
    log: *const Mutex<Vec<String>>,
}

unsafe extern "C" fn test_finalize(o: *mut sys::Object) {
    // SAFETY: o is a TestObj; its log outlives it (set by the test).
    unsafe {
        note(o, "finalize".into());
    }
}

/// # Safety
/// `o` is a live `TestObj`.
unsafe fn note(o: *mut sys::Object, what: String) {
    // SAFETY: caller's contract.
    let log = unsafe { (*o.cast::<TestObj>()).log };
    if !log.is_null() {
        // SAFETY: the test keeps the log alive.
        unsafe { &*log }.lock().unwrap().push(what);
    }
}

static LATE_RELEASES: AtomicUsize = AtomicUsize::new(0);

unsafe extern "C" fn count_late_release(_o: *mut sys::Object, _n: *const c_char, _p: *mut c_void) {
    LATE_RELEASES.fetch_add(1, SeqCst);
}

/// An `instance_finalize` that adds a property (odd, but it must not leak).
unsafe extern "C" fn late_finalize(o: *mut sys::Object) {
    // SAFETY: o is being finalized; its properties still work.
    unsafe {
        object_property_add(
            o,
            c"late".as_ptr(),
            ptr::null(),
            None,
            None,
            Some(count_late_release),
            ptr::null_mut(),
        );
    }
}

fn setup() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let base = sys::TypeInfo {
            name: c"test-prop-obj".as_ptr(),
            parent: c"object".as_ptr(),
            instance_size: size_of::<TestObj>(),
            instance_finalize: Some(test_finalize),
            ..Default::default()
        };
        let sub = sys::TypeInfo {
            name: c"test-prop-sub".as_ptr(),
            parent: c"test-prop-obj".as_ptr(),
            ..Default::default()
        };
        let late = sys::TypeInfo {
            name: c"test-prop-late".as_ptr(),
            parent: c"test-prop-sub".as_ptr(),
            instance_finalize: Some(late_finalize),
            ..Default::default()
        };
        // SAFETY: TypeInfos with static strings and callbacks.
        unsafe {
            type_register_static(&base);
            type_register_static(&sub);
            type_register_static(&late);
        }
    });
}

fn new_obj(ty: &CStr, log: &Mutex<Vec<String>>) -> *mut sys::Object {
    setup();
    // SAFETY: a registered concrete type.
    let o = unsafe { object_new(ty.as_ptr()) };
    // SAFETY: o is a fresh TestObj (or subtype).
    unsafe {
        (*o.cast::<TestObj>()).log = log;
    }
    o
}

fn take_err(err: &mut *mut sys::Error) -> String {
    // SAFETY: a live error from this crate, freed here.
    let e = unsafe { crate::error::from_raw(*err) }.expect("an error was set");
    *err = ptr::null_mut();
    e.message().to_owned()
}

/// The opaque of a custom property: a value and a release counter.
struct Cell {
    value: u64,
    releases: usize,
}

unsafe extern "C" fn cell_get(
    _o: *mut sys::Object,
    v: *mut sys::Visitor,
    name: *const c_char,
    opaque: *mut c_void,
    errp: Errp,
) {
    // SAFETY: opaque is the test's Cell; an output visit of a local.
    unsafe {
        let mut value = (*opaque.cast::<Cell>()).value;
        visit_type_uint64(v, name, &mut value, errp);
    }
}

unsafe extern "C" fn cell_set(
    _o: *mut sys::Object,
    v: *mut sys::Visitor,
    name: *const c_char,
    opaque: *mut c_void,
    errp: Errp,
) {
    let mut value = 0;
    // SAFETY: opaque is the test's Cell; an input visit into a local.
    unsafe {
        if visit_type_uint64(v, name, &mut value, errp) {
            (*opaque.cast::<Cell>()).value = value;
        }
    }
}

unsafe extern "C" fn cell_release(o: *mut sys::Object, name: *const c_char, opaque: *mut c_void) {
    // SAFETY: opaque is the test's Cell; o a live TestObj; name valid.
    unsafe {
        (*opaque.cast::<Cell>()).releases += 1;
        note(
            o,
            format!("release {}", CStr::from_ptr(name).to_string_lossy()),
        );
    }
}

/// # Safety
/// `o` is live; `cell` outlives the property.
unsafe fn add_cell(o: *mut sys::Object, name: &CStr, cell: &mut Cell) -> *mut sys::ObjectProperty {
    // SAFETY: caller's contract.
    unsafe {
        object_property_add(
            o,
            name.as_ptr(),
            c"uint64".as_ptr(),
            Some(cell_get),
            Some(cell_set),
            Some(cell_release),
            (cell as *mut Cell).cast(),
        )
    }
}

#[test]
// One linear script of 30 asserts: each assert! counts as a branch, not
// the complexity the lint is after.
#[allow(clippy::cognitive_complexity)]
fn add_get_set_del() {
    let log = Mutex::new(Vec::new());
    let o = new_obj(c"test-prop-obj", &log);
    let mut cell = Cell {
        value: 5,
        releases: 0,
    };
    let mut err: *mut sys::Error = ptr::null_mut();
    // SAFETY: (whole test) o is live until the final unref; cell
    // outlives its property; err is a valid errp.
    unsafe {
        let p = add_cell(o, c"x", &mut cell);
        assert!(!p.is_null());
        assert_eq!(object_property_find(o, c"x".as_ptr()), p);
        assert_eq!(CStr::from_ptr((*p).name), c"x");
        assert_eq!(
            CStr::from_ptr(object_property_get_type(o, c"x".as_ptr(), &mut err)),
            c"uint64"
        );
        assert_eq!(object_property_get_uint(o, c"x".as_ptr(), &mut err), 5);
        assert_eq!(object_property_get_int(o, c"x".as_ptr(), &mut err), 5);
        assert!(object_property_set_uint(o, c"x".as_ptr(), 9, &mut err));
        assert_eq!(cell.value, 9);
        assert!(object_property_set_int(o, c"x".as_ptr(), -1, &mut err));
        assert_eq!(
            cell.value,
            u64::MAX,
            "QEMU's uint64 input accepts negative numbers"
        );
        assert_eq!(object_property_get_int(o, c"x".as_ptr(), &mut err), -1);
        assert_eq!(
            take_err(&mut err),
            "Invalid parameter type for 'x', expected: int"
        );
        assert!(!object_property_get_bool(o, c"x".as_ptr(), &mut err));
        assert_eq!(
            take_err(&mut err),
            "Invalid parameter type for 'x', expected: boolean"
        );
        assert!(object_property_get_str(o, c"x".as_ptr(), &mut err).is_null());
        assert_eq!(
            take_err(&mut err),
            "Invalid parameter type for 'x', expected: string"
        );
        assert!(!object_property_set_bool(o, c"x".as_ptr(), true, &mut err));
        assert_eq!(take_err(&mut err), "Parameter 'x' expects uint64");
        assert!(!object_property_set_str(
            o,
            c"x".as_ptr(),
            c"7".as_ptr(),
            ptr::null_mut()
        ));

        object_property_del(o, c"x".as_ptr());
        assert_eq!(cell.releases, 1, "del releases at once");
        assert!(object_property_find(o, c"x".as_ptr()).is_null());
        assert_eq!(object_property_get_uint(o, c"x".as_ptr(), &mut err), 0);
        assert_eq!(take_err(&mut err), "Property 'test-prop-obj.x' not found");
        assert!(!object_property_set_uint(o, c"x".as_ptr(), 1, &mut err));
        assert_eq!(take_err(&mut err), "Property 'test-prop-obj.x' not found");
        assert!(object_property_find_err(o, c"x".as_ptr(), &mut err).is_null());
        assert_eq!(take_err(&mut err), "Property 'test-prop-obj.x' not found");
        assert_eq!(
            object_property_get_int(o, c"x".as_ptr(), ptr::null_mut()),
            -1
        );
        object_unref(o.cast());
    }
    assert_eq!(cell.releases, 1, "a deleted property is not released again");
    assert_eq!(*log.lock().unwrap(), ["release x", "finalize"]);
}

#[test]
fn release_at_finalize_before_instance_finalize() {
    let log = Mutex::new(Vec::new());
    let o = new_obj(c"test-prop-obj", &log);
    let mut a = Cell {
        value: 1,
        releases: 0,
    };
    let mut b = Cell {
        value: 2,
        releases: 0,
    };
    // SAFETY: o is live until its last unref; the cells outlive it.
    unsafe {
        add_cell(o, c"a", &mut a);
        add_cell(o, c"b", &mut b);
        object_ref(o.cast());
        object_unref(o.cast());
        assert!(
            log.lock().unwrap().is_empty(),
            "not finalized while referenced"
        );
        object_unref(o.cast());
    }
    assert_eq!((a.releases, b.releases), (1, 1));
    assert_eq!(*log.lock().unwrap(), ["release a", "release b", "finalize"]);
}

unsafe extern "C" fn release_deleting_other(
    o: *mut sys::Object,
    _n: *const c_char,
    _p: *mut c_void,
) {
    // SAFETY: o is being finalized but its properties still work.
    unsafe {
        note(o, "release first".into());
        object_property_del(o, c"second".as_ptr());
        // Adding during finalize is allowed too; it is released below.
        let mut late = Box::new(Cell {
            value: 0,
            releases: 0,
        });
        add_cell(o, c"late", &mut late);
        Box::leak(late);
    }
}

#[test]
fn release_may_change_properties() {
    let log = Mutex::new(Vec::new());
    let o = new_obj(c"test-prop-obj", &log);
    let mut second = Cell {
        value: 0,
        releases: 0,
    };
    // SAFETY: o is live until its unref; second outlives it.
    unsafe {
        object_property_add(
            o,
            c"first".as_ptr(),
            ptr::null(),
            None,
            None,
            Some(release_deleting_other),
            ptr::null_mut(),
        );
        add_cell(o, c"second", &mut second);
        object_unref(o.cast());
    }
    assert_eq!(second.releases, 1);
    assert_eq!(
        *log.lock().unwrap(),
        [
            "release first",
            "release second",
            "release late",
            "finalize"
        ]
    );
}

#[test]
fn duplicates_and_the_type_property() {
    let log = Mutex::new(Vec::new());
    let o = new_obj(c"test-prop-obj", &log);
    let mut err: *mut sys::Error = ptr::null_mut();
    let add = |name: &CStr, errp: Errp| {
        // SAFETY: o is live; a property without callbacks.
        unsafe {
            object_property_try_add(
                o,
                name.as_ptr(),
                c"x".as_ptr(),
                None,
                None,
                None,
                ptr::null_mut(),
                errp,
            )
        }
    };
    assert!(!add(c"p", &mut err).is_null());
    assert!(add(c"p", &mut err).is_null());
    assert_eq!(
        take_err(&mut err),
        "attempt to add duplicate property 'p' to object (type 'test-prop-obj')"
    );
    assert!(
        add(c"type", &mut err).is_null(),
        "every object has the property 'type'"
    );
    assert_eq!(
        take_err(&mut err),
        "attempt to add duplicate property 'type' to object (type 'test-prop-obj')"
    );
    // SAFETY: o is live.
    unsafe {
        let s = object_property_get_str(o, c"type".as_ptr(), &mut err);
        assert_eq!(CStr::from_ptr(s), c"test-prop-obj");
        sys::g_free(s.cast());
        assert!(!object_property_set_str(
            o,
            c"type".as_ptr(),
            c"x".as_ptr(),
            &mut err
        ));
        assert_eq!(
            take_err(&mut err),
            "Property 'test-prop-obj.type' is not writable"
        );
        object_unref(o.cast());
    }
}

#[test]
fn add_duplicate_aborts() {
    adding_aborts(
        "qom::property::tests::add_duplicate_aborts",
        &[c"d", c"d"],
        "attempt to add duplicate property 'd' to object (type 'test-prop-obj')",
    );
}

#[test]
fn array_names_abort() {
    adding_aborts(
        "qom::property::tests::array_names_abort",
        &[c"slot[*]"],
        "property 'slot[*]': array properties are not supported",
    );
}

/// In a child process (test `name`), adds properties `names` to an object
/// with `object_property_add()`, which must abort saying `expected`.
fn adding_aborts(name: &str, names: &[&CStr], expected: &str) {
    if in_child() {
        let log = Mutex::new(Vec::new());
        let o = new_obj(c"test-prop-obj", &log);
        for n in names {
            // SAFETY: o is live; a property without callbacks.
            unsafe {
                object_property_add(
                    o,
                    n.as_ptr(),
                    ptr::null(),
                    None,
                    None,
                    None,
                    ptr::null_mut(),
                );
            }
        }
        return;
    }
    let err = abort_message(name);
    assert!(err.contains(expected), "{err}");
}

#[test]
fn del_of_missing_property_aborts() {
    if in_child() {
        let log = Mutex::new(Vec::new());
        let o = new_obj(c"test-prop-obj", &log);
        // SAFETY: o is live; the call aborts.
        unsafe {
            object_property_del(o, c"nope".as_ptr());
        }
        return;
    }
    let err = abort_message("qom::property::tests::del_of_missing_property_aborts");
    assert!(err.contains("has no property 'nope'"), "{err}");
}

#[test]
fn pointer_properties_and_flags() {
    let log = Mutex::new(Vec::new());
    let o = new_obj(c"test-prop-obj", &log);
    let mut err: *mut sys::Error = ptr::null_mut();
    let (u8v, ro, wo, u64v) = (
        Shared::new(7u8),
        200u8,
        Shared::new(0u64),
        Shared::new(u64::MAX),
    );
    let rw = sys::ObjectPropertyFlags_OBJ_PROP_FLAG_READWRITE;
    // SAFETY: (whole test) o is live; the integers outlive it.
    unsafe {
        object_property_add_uint8_ptr(o, c"u8".as_ptr(), u8v.as_ptr(), rw);
        object_property_add_uint8_ptr(
            o,
            c"ro".as_ptr(),
            &ro,
            sys::ObjectPropertyFlags_OBJ_PROP_FLAG_READ,
        );
        object_property_add_uint64_ptr(
            o,
            c"wo".as_ptr(),
            wo.as_ptr(),
            sys::ObjectPropertyFlags_OBJ_PROP_FLAG_WRITE,
        );
        object_property_add_uint64_ptr(o, c"u64".as_ptr(), u64v.as_ptr(), rw);
        assert_eq!(
            CStr::from_ptr(object_property_get_type(o, c"ro".as_ptr(), &mut err)),
            c"uint8"
        );

        assert_eq!(object_property_get_uint(o, c"u8".as_ptr(), &mut err), 7);
        assert!(!object_property_set_uint(o, c"u8".as_ptr(), 300, &mut err));
        assert_eq!(take_err(&mut err), "Parameter 'u8' expects uint8_t");
        assert!(object_property_set_uint(o, c"u8".as_ptr(), 255, &mut err));
        assert_eq!(u8v.get(), 255);
        u8v.set(3);
        assert_eq!(
            object_property_get_uint(o, c"u8".as_ptr(), &mut err),
            u64::from(u8v.get())
        );

        assert_eq!(object_property_get_uint(o, c"ro".as_ptr(), &mut err), 200);
        assert!(!object_property_set_uint(o, c"ro".as_ptr(), 1, &mut err));
        assert_eq!(
            take_err(&mut err),
            "Property 'test-prop-obj.ro' is not writable"
        );

        assert!(object_property_set_uint(o, c"wo".as_ptr(), 70000, &mut err));
        assert_eq!(wo.get(), 70000);
        assert_eq!(object_property_get_uint(o, c"wo".as_ptr(), &mut err), 0);
        assert_eq!(
            take_err(&mut err),
            "Property 'test-prop-obj.wo' is not readable"
        );
        wo.set(1);

        assert_eq!(
            object_property_get_uint(o, c"u64".as_ptr(), &mut err),
            u64::MAX
        );
        assert_eq!(object_property_get_int(o, c"u64".as_ptr(), &mut err), -1);
        assert_eq!(
            take_err(&mut err),
            "Invalid parameter type for 'u64', expected: int"
        );
        u64v.set(12);
        assert_eq!(object_property_get_int(o, c"u64".as_ptr(), &mut err), 12);
        object_unref(o.cast());
    }
    assert!(err.is_null());
    assert_eq!(wo.get(), 1);
}

static FLAG: Mutex<bool> = Mutex::new(false);

unsafe extern "C" fn get_flag(_o: *mut sys::Object, _e: Errp) -> bool {
    *FLAG.lock().unwrap()
}
unsafe extern "C" fn set_flag(_o: *mut sys::Object, v: bool, _e: Errp) {
    *FLAG.lock().unwrap() = v;
}
unsafe extern "C" fn get_label(o: *mut sys::Object, errp: Errp) -> *mut c_char {
    // SAFETY: o is live; errp valid.
    let n = unsafe { object_property_get_uint(o, c"n".as_ptr(), errp) };
    if n == 0 {
        // SAFETY: errp is valid.
        unsafe {
            ErrorImpl::new("no label yet").propagate(errp);
        }
        return ptr::null_mut();
    }
    g_strdup(&format!("label-{n}"))
}
unsafe extern "C" fn set_label(o: *mut sys::Object, v: *const c_char, errp: Errp) {
    // SAFETY: v is the visited string; o live.
    let n: u64 = unsafe { CStr::from_ptr(v) }
        .to_str()
        .unwrap()
        .parse()
        .unwrap_or(0);
    // SAFETY: o is live.
    unsafe {
        object_property_set_uint(o, c"n".as_ptr(), n, errp);
    }
}

#[test]
fn str_and_bool_helpers_reenter_qom() {
    let log = Mutex::new(Vec::new());
    let o = new_obj(c"test-prop-obj", &log);
    let mut err: *mut sys::Error = ptr::null_mut();
    let n = Shared::new(0u64);
    // SAFETY: (whole test) o is live; n outlives it.
    unsafe {
        object_property_add_uint64_ptr(
            o,
            c"n".as_ptr(),
            n.as_ptr(),
            sys::ObjectPropertyFlags_OBJ_PROP_FLAG_READWRITE,
        );
        object_property_add_bool(o, c"flag".as_ptr(), Some(get_flag), Some(set_flag));
        object_property_add_str(o, c"label".as_ptr(), Some(get_label), Some(set_label));
        object_property_add_str(o, c"wo".as_ptr(), None, Some(set_label));
        assert_eq!(
            CStr::from_ptr(object_property_get_type(o, c"flag".as_ptr(), &mut err)),
            c"bool"
        );
        assert_eq!(
            CStr::from_ptr(object_property_get_type(o, c"label".as_ptr(), &mut err)),
            c"string"
        );

        assert!(object_property_set_bool(
            o,
            c"flag".as_ptr(),
            true,
            &mut err
        ));
        assert!(object_property_get_bool(o, c"flag".as_ptr(), &mut err));
        assert!(!object_property_set_uint(o, c"flag".as_ptr(), 1, &mut err));
        assert_eq!(
            take_err(&mut err),
            "Invalid parameter type for 'flag', expected: boolean"
        );

        // The getter's own error is passed on.
        assert!(object_property_get_str(o, c"label".as_ptr(), &mut err).is_null());
        assert_eq!(take_err(&mut err), "no label yet");
        // Accessors that use properties of the same object.
        assert!(object_property_set_str(
            o,
            c"label".as_ptr(),
            c"33".as_ptr(),
            &mut err
        ));
        assert_eq!(n.get(), 33);
        let s = object_property_get_str(o, c"label".as_ptr(), &mut err);
        assert_eq!(CStr::from_ptr(s), c"label-33");
        sys::g_free(s.cast());
        assert!(object_property_set_str(
            o,
            c"wo".as_ptr(),
            c"4".as_ptr(),
            &mut err
        ));
        assert!(object_property_get_str(o, c"wo".as_ptr(), &mut err).is_null());
        assert_eq!(
            take_err(&mut err),
            "Property 'test-prop-obj.wo' is not readable"
        );
        n.set(4);
        object_unref(o.cast());
    }
    assert!(err.is_null());
    assert_eq!(n.get(), 4);
}

unsafe extern "C" fn visits_nothing(
    _o: *mut sys::Object,
    _v: *mut sys::Visitor,
    _n: *const c_char,
    _p: *mut c_void,
    _e: Errp,
) {
}

unsafe extern "C" fn visits_int(
    _o: *mut sys::Object,
    v: *mut sys::Visitor,
    name: *const c_char,
    _p: *mut c_void,
    errp: Errp,
) {
    let mut x = -5i64;
    // SAFETY: an output visit of a local.
    unsafe {
        visit_type_int64(v, name, &mut x, errp);
    }
}

#[test]
fn getter_results() {
    let log = Mutex::new(Vec::new());
    let o = new_obj(c"test-prop-obj", &log);
    let mut err: *mut sys::Error = ptr::null_mut();
    // SAFETY: o is live until unref.
    unsafe {
        object_property_add(
            o,
            c"none".as_ptr(),
            ptr::null(),
            Some(visits_nothing),
            None,
            None,
            ptr::null_mut(),
        );
        object_property_add(
            o,
            c"neg".as_ptr(),
            c"int64".as_ptr(),
            Some(visits_int),
            None,
            None,
            ptr::null_mut(),
        );
        assert_eq!(object_property_get_uint(o, c"none".as_ptr(), &mut err), 0);
        assert_eq!(
            take_err(&mut err),
            "Property 'test-prop-obj.none' produced no value"
        );
        assert_eq!(object_property_get_int(o, c"neg".as_ptr(), &mut err), -5);
        assert_eq!(object_property_get_uint(o, c"neg".as_ptr(), &mut err), 0);
        assert_eq!(
            take_err(&mut err),
            "Invalid parameter type for 'neg', expected: uint"
        );
        assert!(!object_property_set_int(o, c"neg".as_ptr(), 1, &mut err));
        assert_eq!(
            take_err(&mut err),
            "Property 'test-prop-obj.neg' is not writable"
        );
        object_unref(o.cast());
    }
}

#[test]
fn type_property_of_a_subtype() {
    let log = Mutex::new(Vec::new());
    let mut err: *mut sys::Error = ptr::null_mut();
    let o = new_obj(c"test-prop-sub", &log);
    // SAFETY: o is live until the unref.
    unsafe {
        let t = object_property_get_str(o, c"type".as_ptr(), &mut err);
        assert_eq!(CStr::from_ptr(t), c"test-prop-sub");
        sys::g_free(t.cast());
        assert_eq!(
            CStr::from_ptr(object_property_get_type(o, c"type".as_ptr(), &mut err)),
            c"string"
        );
        object_unref(o.cast());
    }
    assert!(err.is_null());
    assert_eq!(*log.lock().unwrap(), ["finalize"]);
}

#[test]
fn concurrent_adds_and_reads() {
    let log = Mutex::new(Vec::new());
    let o = new_obj(c"test-prop-obj", &log) as usize;
    let values: Vec<u64> = (0..200).collect();
    std::thread::scope(|s| {
        for t in 0..4 {
            let values = &values;
            s.spawn(move || {
                let o = o as *mut sys::Object;
                for (i, value) in values.iter().enumerate().skip(t * 50).take(50) {
                    let name = CString::new(format!("v{i}")).unwrap();
                    // SAFETY: o is live for the scope; values outlive it.
                    unsafe {
                        object_property_add_uint64_ptr(
                            o,
                            name.as_ptr(),
                            value,
                            sys::ObjectPropertyFlags_OBJ_PROP_FLAG_READ,
                        );
                        assert_eq!(
                            object_property_get_uint(o, name.as_ptr(), ptr::null_mut()),
                            i as u64
                        );
                        // Reading another thread's properties while
                        // they are being added.
                        let other = CString::new(format!("v{}", (i + 50) % 200)).unwrap();
                        let p = object_property_find(o, other.as_ptr());
                        assert!(p.is_null() || CStr::from_ptr((*p).name) == other.as_c_str());
                    }
                }
            });
        }
    });
    let o = o as *mut sys::Object;
    // SAFETY: o is live; all threads are done.
    unsafe {
        for i in 0..200u64 {
            let name = CString::new(format!("v{i}")).unwrap();
            assert_eq!(
                object_property_get_uint(o, name.as_ptr(), ptr::null_mut()),
                i
            );
        }
        assert_eq!(object_table(o, false).unwrap().lock().len(), 200);
        object_unref(o.cast());
    }
}

#[test]
fn property_added_by_a_finalizer_is_released() {
    let log = Mutex::new(Vec::new());
    let o = new_obj(c"test-prop-late", &log);
    // SAFETY: o is live; this is its last reference.
    unsafe {
        object_unref(o.cast());
    }
    assert_eq!(LATE_RELEASES.load(SeqCst), 1);
    assert_eq!(*log.lock().unwrap(), ["finalize"]);
}
