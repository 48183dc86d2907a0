//! Tests of the object model.

use std::{
    ffi::{c_void, CStr},
    mem::size_of,
    ptr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Mutex, Once,
    },
};

use super::{
    object::{
        object_class_dynamic_cast, object_dynamic_cast, object_dynamic_cast_assert, object_new,
        object_ref, object_unref,
    },
    types::{
        class_type, lock, lookup, module_call_init, object_get_typename, register_module_init,
        type_register_static,
    },
};
use crate::{
    sys,
    util::testing::{abort_message, in_child},
};

#[repr(C)]
struct Base {
    parent: sys::Object,
    log: *const Mutex<Vec<&'static str>>,
}

#[repr(C)]
struct Derived {
    parent: Base,
    extra: u64,
}

#[repr(C)]
struct BaseClass {
    parent: sys::ObjectClass,
    tag: u32,
    base_inits: u32,
}

static LOG: Mutex<Vec<&'static str>> = Mutex::new(Vec::new());

/// QEMU's `object_class_by_name()`.
fn class_by_name(name: &CStr) -> *mut sys::ObjectClass {
    lookup(name).map_or(ptr::null_mut(), super::types::TypeImpl::class)
}
static MODULE_RUNS: AtomicUsize = AtomicUsize::new(0);

fn log(s: &'static str) {
    lock(&LOG).push(s);
}

unsafe extern "C" fn base_init(_o: *mut sys::Object) {
    log("base_init");
}
unsafe extern "C" fn derived_init(o: *mut sys::Object) {
    log("derived_init");
    // SAFETY: o is a Derived being initialised.
    unsafe {
        (*o.cast::<Derived>()).extra = 7;
    }
}
unsafe extern "C" fn derived_post(_o: *mut sys::Object) {
    log("derived_post");
}
unsafe extern "C" fn base_fin(_o: *mut sys::Object) {
    log("base_fin");
}
unsafe extern "C" fn derived_fin(_o: *mut sys::Object) {
    log("derived_fin");
}
unsafe extern "C" fn base_class_init(k: *mut sys::ObjectClass, _d: *const c_void) {
    // SAFETY: k is a BaseClass (class_size below).
    unsafe {
        (*k.cast::<BaseClass>()).tag = 1;
    }
}
unsafe extern "C" fn base_class_base_init(k: *mut sys::ObjectClass, _d: *const c_void) {
    // SAFETY: as above, for subclasses.
    unsafe {
        (*k.cast::<BaseClass>()).base_inits += 1;
    }
}
unsafe extern "C" fn derived_class_init(k: *mut sys::ObjectClass, d: *const c_void) {
    // SAFETY: as above; d is the class_data below.
    unsafe {
        (*k.cast::<BaseClass>()).tag += *d.cast::<u32>();
    }
}
static DERIVED_DATA: u32 = 10;

unsafe extern "C" fn register_test_types() {
    MODULE_RUNS.fetch_add(1, Ordering::SeqCst);
    let base = sys::TypeInfo {
        name: c"test-base".as_ptr(),
        parent: c"object".as_ptr(),
        instance_size: size_of::<Base>(),
        instance_init: Some(base_init),
        instance_finalize: Some(base_fin),
        abstract_: true,
        class_size: size_of::<BaseClass>(),
        class_init: Some(base_class_init),
        class_base_init: Some(base_class_base_init),
        ..Default::default()
    };
    let derived = sys::TypeInfo {
        name: c"test-derived".as_ptr(),
        parent: c"test-base".as_ptr(),
        instance_size: size_of::<Derived>(),
        instance_init: Some(derived_init),
        instance_post_init: Some(derived_post),
        instance_finalize: Some(derived_fin),
        abstract_: false,
        class_size: 0,
        class_init: Some(derived_class_init),
        class_data: (&DERIVED_DATA as *const u32).cast(),
        ..Default::default()
    };
    let aligned = sys::TypeInfo {
        name: c"test-aligned".as_ptr(),
        parent: c"test-derived".as_ptr(),
        instance_size: 0,
        instance_align: 64,
        abstract_: false,
        ..Default::default()
    };
    // SAFETY: TypeInfos with static strings, callbacks and data
    // (registration copies the TypeInfo itself).
    unsafe {
        type_register_static(&derived);
        type_register_static(&base);
        type_register_static(&aligned);
    }
}

fn setup() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: a plain registration function.
        unsafe {
            register_module_init(
                Some(register_test_types),
                sys::module_init_type_MODULE_INIT_QOM,
            );
        }
    });
}

#[test]
fn lifecycle_and_casts() {
    setup();
    lock(&LOG).clear();
    // SAFETY: a registered concrete type.
    let o = unsafe { object_new(c"test-derived".as_ptr()) };
    assert_eq!(MODULE_RUNS.load(Ordering::SeqCst), 1);
    module_call_init(sys::module_init_type_MODULE_INIT_QOM);
    assert_eq!(
        MODULE_RUNS.load(Ordering::SeqCst),
        1,
        "init functions run once"
    );
    assert_eq!(*lock(&LOG), ["base_init", "derived_init", "derived_post"]);
    // SAFETY: o is a live test-derived instance for the whole block.
    unsafe {
        assert_eq!((*o).ref_, 1);
        assert_eq!((*o.cast::<Derived>()).extra, 7);
        assert_eq!(
            CStr::from_ptr(object_get_typename(o)).to_str().unwrap(),
            "test-derived"
        );
        let k = (*o).class.cast::<BaseClass>();
        assert_eq!((*k).tag, 11, "parent class copied, then class_init");
        assert_eq!((*k).base_inits, 1, "base's class_base_init ran for derived");
        let bk = class_by_name(c"test-base").cast::<BaseClass>();
        assert_eq!((*bk).tag, 1);
        assert_eq!(class_type(bk.cast()).name_str(), "test-base");

        assert_eq!(object_dynamic_cast(o, c"object".as_ptr()), o);
        assert_eq!(object_dynamic_cast(o, c"test-base".as_ptr()), o);
        assert!(object_dynamic_cast(o, c"qio-channel".as_ptr()).is_null());
        assert!(object_dynamic_cast(o, c"no-such-type".as_ptr()).is_null());
        assert!(object_dynamic_cast(ptr::null_mut(), c"object".as_ptr()).is_null());
        assert!(object_class_dynamic_cast(bk.cast(), c"test-derived".as_ptr()).is_null());
        assert_eq!(
            object_dynamic_cast_assert(o, c"test-base".as_ptr(), c"f".as_ptr(), 1, c"g".as_ptr()),
            o
        );

        assert_eq!(object_ref(o.cast()), o);
        assert_eq!((*o).ref_, 2);
        object_unref(o.cast());
        assert_eq!(lock(&LOG).len(), 3, "not finalized while referenced");
        object_unref(o.cast());
        object_unref(ptr::null_mut());
        assert!(object_ref(ptr::null_mut()).is_null());
    }
    assert_eq!(
        lock(&LOG)[3..],
        ["derived_fin", "base_fin"],
        "finalize most derived first"
    );
}

#[test]
fn inherited_size_and_alignment() {
    setup();
    // SAFETY: a registered concrete type; released at the end.
    unsafe {
        let o = object_new(c"test-aligned".as_ptr());
        assert_eq!(o as usize % 64, 0);
        assert_eq!((*o.cast::<Derived>()).extra, 7, "parent instance_init ran");
        assert_eq!(object_dynamic_cast(o, c"test-derived".as_ptr()), o);
        object_unref(o.cast());
    }
}

#[test]
fn builtin_types() {
    for name in [
        c"object",
        c"qio-channel",
        c"qio-channel-socket",
        c"qio-dns-resolver",
    ] {
        assert!(!class_by_name(name).is_null(), "{name:?}");
    }
    assert!(class_by_name(c"nope").is_null());
}

#[test]
fn cast_assert_failure_aborts() {
    setup();
    if in_child() {
        // SAFETY: a registered type; the failing cast aborts.
        unsafe {
            let o = object_new(c"test-derived".as_ptr());
            object_dynamic_cast_assert(
                o,
                c"qio-channel".as_ptr(),
                c"f.c".as_ptr(),
                3,
                c"fn".as_ptr(),
            );
        }
        return;
    }
    let err = abort_message("qom::tests::cast_assert_failure_aborts");
    assert!(err.contains("f.c:3:fn: Object 0x"), "{err}");
    assert!(
        err.contains("is not an instance of type qio-channel"),
        "{err}"
    );
}

#[test]
fn interfaces_are_refused() {
    if in_child() {
        let interfaces = [
            sys::InterfaceInfo {
                type_: c"some-interface".as_ptr(),
            },
            sys::InterfaceInfo { type_: ptr::null() },
        ];
        let info = sys::TypeInfo {
            name: c"test-with-interface".as_ptr(),
            parent: c"object".as_ptr(),
            interfaces: interfaces.as_ptr(),
            ..Default::default()
        };
        // SAFETY: a valid TypeInfo; registering it aborts.
        unsafe {
            type_register_static(&info);
        }
        return;
    }
    let err = abort_message("qom::tests::interfaces_are_refused");
    assert!(
        err.contains("type 'test-with-interface': interfaces are not supported"),
        "{err}"
    );
}
