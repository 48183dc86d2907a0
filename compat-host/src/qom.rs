//! The QEMU Object Model subset of qom/object.h and qemu/module.h.
//!
//! Types live for the whole process: each registered `TypeInfo` is copied
//! into a leaked [`TypeImpl`], whose address is the C `Type` handle and
//! what `ObjectClass::type` points to.  The registry is a mutex-protected
//! map; user callbacks (module init functions, class_init, instance_init,
//! instance_finalize) always run with no lock held, so they may call back
//! into QOM.

use std::{
    collections::BTreeMap,
    ffi::{c_char, c_int, c_void, CStr, CString},
    io::Write,
    mem::size_of,
    ptr,
    sync::{
        atomic::{AtomicU32, AtomicUsize, Ordering},
        Mutex, MutexGuard, Once, OnceLock,
    },
};

use crate::{sys, util::cstr};

/// What a C `Type` points to.
pub struct TypeImpl {
    name: CString,
    parent_name: Option<CString>,
    /// The registered TypeInfo (its string pointers are not used after
    /// registration; `name`/`parent_name`/`interfaces` hold copies).
    info: sys::TypeInfo,
    interfaces: Vec<CString>,
    parent: OnceLock<Option<&'static TypeImpl>>,
    /// The class, as an address (`*mut ObjectClass`), created at first use.
    class: OnceLock<usize>,
}

// SAFETY: after registration a TypeImpl is never mutated except through
// its OnceLocks; the raw pointers in `info` are C function pointers and
// class data that the registering code guarantees stay valid and may be
// used from any thread (QEMU has the same requirement).
unsafe impl Send for TypeImpl {}
// SAFETY: as above.
unsafe impl Sync for TypeImpl {}

static TYPES: Mutex<BTreeMap<CString, &'static TypeImpl>> = Mutex::new(BTreeMap::new());
static BUILTINS: Once = Once::new();

struct ModuleInit {
    func: unsafe extern "C" fn(),
    kind: sys::module_init_type,
    ran: bool,
}

static MODULES: Mutex<Vec<ModuleInit>> = Mutex::new(Vec::new());

/// How many MODULE_INIT_QOM functions have not run yet, so that type
/// lookups (every checked cast does one) skip the MODULES lock.
static QOM_PENDING: AtomicUsize = AtomicUsize::new(0);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere must not make QOM unusable; the data stays
    // consistent because no critical section runs foreign code.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Prints a QOM usage error and aborts, as QEMU's assertions do.
fn die(msg: &str) -> ! {
    let _ = writeln!(std::io::stderr().lock(), "qom: {msg}");
    std::process::abort();
}

/// # Safety
/// `info` points to a valid TypeInfo whose strings are NUL-terminated.
unsafe fn register(info: *const sys::TypeInfo) -> &'static TypeImpl {
    // SAFETY: caller's contract.
    let info = unsafe { *info };
    // SAFETY: caller's contract.
    let Some(name) = (unsafe { cstr(info.name) }) else {
        die("type_register_static: TypeInfo without a name");
    };
    let name = CString::new(name.as_bytes()).unwrap_or_default();
    // SAFETY: caller's contract.
    let parent_name =
        unsafe { cstr(info.parent) }.map(|p| CString::new(p.as_bytes()).unwrap_or_default());
    let mut interfaces = Vec::new();
    if !info.interfaces.is_null() {
        let mut i = 0;
        loop {
            // SAFETY: the interfaces array ends with an entry whose type
            // is NULL (QEMU's contract).
            let t = unsafe { (*info.interfaces.add(i)).type_ };
            if t.is_null() {
                break;
            }
            // SAFETY: as above, a NUL-terminated name.
            interfaces.push(unsafe { CStr::from_ptr(t) }.to_owned());
            i += 1;
        }
    }
    let mut types = lock(&TYPES);
    if types.contains_key(&name) {
        drop(types);
        die(&format!(
            "Registering `{}' which already exists",
            name.to_string_lossy()
        ));
    }
    let t: &'static TypeImpl = Box::leak(Box::new(TypeImpl {
        name: name.clone(),
        parent_name,
        info,
        interfaces,
        parent: OnceLock::new(),
        class: OnceLock::new(),
    }));
    types.insert(name, t);
    t
}

/// A TypeInfo with a name, a parent and an instance size, every other
/// field zero or NULL: the start of a built-in type's constant, which
/// sets the rest with `..type_info(...)` (`Default` is not const).
pub(crate) const fn type_info(
    name: &'static CStr,
    parent: Option<&'static CStr>,
    instance_size: usize,
) -> sys::TypeInfo {
    sys::TypeInfo {
        name: name.as_ptr(),
        parent: match parent {
            Some(p) => p.as_ptr(),
            None => ptr::null(),
        },
        instance_size,
        instance_align: 0,
        instance_init: None,
        instance_post_init: None,
        instance_finalize: None,
        abstract_: false,
        class_size: 0,
        class_init: None,
        class_base_init: None,
        class_data: ptr::null(),
        interfaces: ptr::null(),
    }
}

const OBJECT_INFO: sys::TypeInfo = sys::TypeInfo {
    abstract_: true,
    class_size: size_of::<sys::ObjectClass>(),
    class_init: Some(crate::property::object_class_init),
    ..type_info(c"object", None, size_of::<sys::Object>())
};

/// QEMU's InterfaceClass: an ObjectClass plus the concrete class and the
/// interface type.
const INTERFACE_CLASS_SIZE: usize = size_of::<sys::ObjectClass>() + 2 * size_of::<usize>();

const INTERFACE_INFO: sys::TypeInfo = sys::TypeInfo {
    name: c"interface".as_ptr(),
    abstract_: true,
    class_size: INTERFACE_CLASS_SIZE,
    class_init: None,
    ..OBJECT_INFO
};

fn ensure_builtins() {
    BUILTINS.call_once(|| {
        let mut infos = vec![OBJECT_INFO, INTERFACE_INFO];
        infos.extend(crate::channel::type_infos());
        infos.extend(crate::address::type_infos());
        for info in &infos {
            // SAFETY: these TypeInfos are constants with static strings.
            unsafe { register(info) };
        }
    });
}

/// Looks a type up, first running pending QOM module init functions.
fn lookup(name: &CStr) -> Option<&'static TypeImpl> {
    ensure_builtins();
    if QOM_PENDING.load(Ordering::Acquire) > 0 {
        run_module_init(sys::module_init_type_MODULE_INIT_QOM);
    }
    lock(&TYPES).get(name).copied()
}

impl TypeImpl {
    fn name_str(&self) -> String {
        self.name.to_string_lossy().into_owned()
    }

    fn parent(&self) -> Option<&'static TypeImpl> {
        *self.parent.get_or_init(|| {
            let pname = self.parent_name.as_ref()?;
            match lookup(pname) {
                Some(p) => Some(p),
                None => die(&format!(
                    "Type '{}' is missing its parent '{}'",
                    self.name_str(),
                    pname.to_string_lossy()
                )),
            }
        })
    }

    /// This type and its ancestors, most derived first.
    fn ancestry(&'static self) -> impl Iterator<Item = &'static TypeImpl> {
        std::iter::successors(Some(self), |t| t.parent())
    }

    fn class_size(&self) -> usize {
        match (self.info.class_size, self.parent()) {
            (0, Some(p)) => p.class_size(),
            (0, None) => size_of::<sys::ObjectClass>(),
            (n, _) => n,
        }
    }

    fn instance_size(&self) -> usize {
        match (self.info.instance_size, self.parent()) {
            (0, Some(p)) => p.instance_size(),
            (n, _) => n,
        }
    }

    fn instance_align(&self) -> usize {
        match (self.info.instance_align, self.parent()) {
            (0, Some(p)) => p.instance_align(),
            (n, _) => n,
        }
    }

    fn handle(&'static self) -> sys::Type {
        (self as *const TypeImpl).cast_mut().cast()
    }

    /// # Safety
    /// `t` is NULL or a `Type` handed out by this module.
    unsafe fn from_handle(t: sys::Type) -> Option<&'static TypeImpl> {
        // SAFETY: every Type is a leaked TypeImpl.
        unsafe { t.cast::<TypeImpl>().as_ref() }
    }

    /// The class, created (and class_init run) at first use.
    fn class(&'static self) -> *mut sys::ObjectClass {
        *self.class.get_or_init(|| self.init_class() as usize) as *mut sys::ObjectClass
    }

    fn init_class(&'static self) -> *mut sys::ObjectClass {
        let parent = self.parent();
        let size = self.class_size();
        let parent_size = parent.map_or(0, |p| p.class_size());
        if size < parent_size || size < size_of::<sys::ObjectClass>() {
            die(&format!(
                "class size {size} of type '{}' is smaller than its parent's",
                self.name_str()
            ));
        }
        // SAFETY: g_malloc0 aborts rather than returning NULL; classes
        // live for the whole process like QEMU's.
        let class = unsafe { sys::g_malloc0(size) }.cast::<sys::ObjectClass>();
        if let Some(p) = parent {
            let pc = p.class();
            // SAFETY: the parent class has parent_size bytes and the new
            // one at least as many; they do not overlap.
            unsafe { ptr::copy_nonoverlapping(pc.cast::<u8>(), class.cast::<u8>(), parent_size) };
        }
        // SAFETY: class is a fresh allocation at least ObjectClass big.
        unsafe {
            (*class).type_ = self.handle();
            (*class).interfaces = ptr::null_mut();
            (*class).properties = ptr::null_mut();
            (*class).object_cast_cache = [ptr::null(); 4];
            (*class).class_cast_cache = [ptr::null(); 4];
        }
        for ancestor in self.ancestry().skip(1) {
            if let Some(base_init) = ancestor.info.class_base_init {
                // SAFETY: a C callback registered for exactly this use.
                unsafe { base_init(class, self.info.class_data) };
            }
        }
        if let Some(class_init) = self.info.class_init {
            // SAFETY: as above.
            unsafe { class_init(class, self.info.class_data) };
        }
        class
    }

    /// Whether this type is `target` or derives from it (also through a
    /// declared interface).
    fn is_a(&'static self, target: &'static TypeImpl) -> bool {
        self.ancestry().any(|t| {
            ptr::eq(t, target)
                || t.interfaces.iter().any(|i| {
                    lock(&TYPES)
                        .get(i.as_c_str())
                        .copied()
                        .is_some_and(|it| it.ancestry().any(|x| ptr::eq(x, target)))
                })
        })
    }
}

/// The type of a live class.
///
/// # Safety
/// `klass` is a live class created by this module.
unsafe fn class_type(klass: *const sys::ObjectClass) -> &'static TypeImpl {
    // SAFETY: caller's contract; classes always have their type set.
    match unsafe { TypeImpl::from_handle((*klass).type_) } {
        Some(t) => t,
        None => die("object class without a type"),
    }
}

fn run_module_init(kind: sys::module_init_type) {
    loop {
        let next = {
            let mut mods = lock(&MODULES);
            mods.iter_mut().find(|m| !m.ran && m.kind == kind).map(|m| {
                m.ran = true;
                if kind == sys::module_init_type_MODULE_INIT_QOM {
                    QOM_PENDING.fetch_sub(1, Ordering::AcqRel);
                }
                m.func
            })
        };
        match next {
            // SAFETY: a C init function registered for this purpose; the
            // lock is released so it may register more.
            Some(f) => unsafe { f() },
            None => break,
        }
    }
}

/// # Safety
/// `fn_` is a function that is safe to call once from any thread.
#[no_mangle]
pub unsafe extern "C" fn register_module_init(
    fn_: Option<unsafe extern "C" fn()>,
    type_: sys::module_init_type,
) {
    if let Some(func) = fn_ {
        let mut mods = lock(&MODULES);
        if type_ == sys::module_init_type_MODULE_INIT_QOM {
            QOM_PENDING.fetch_add(1, Ordering::AcqRel);
        }
        mods.push(ModuleInit {
            func,
            kind: type_,
            ran: false,
        });
    }
}

/// Runs every not-yet-run init function of `type_`, in registration order.
#[no_mangle]
pub extern "C" fn module_call_init(type_: sys::module_init_type) {
    if type_ == sys::module_init_type_MODULE_INIT_QOM {
        ensure_builtins();
    }
    run_module_init(type_);
}

/// # Safety
/// `info` is a valid TypeInfo; its callbacks and class data must stay
/// valid for the life of the process.
#[no_mangle]
pub unsafe extern "C" fn type_register_static(info: *const sys::TypeInfo) -> sys::Type {
    ensure_builtins();
    // SAFETY: caller's contract.
    unsafe { register(info) }.handle()
}

/// # Safety
/// `typename` is a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn object_new(typename: *const c_char) -> *mut sys::Object {
    if typename.is_null() {
        die("object_new: NULL type name");
    }
    // SAFETY: caller's contract.
    Layout::of(lookup_for_new(unsafe { CStr::from_ptr(typename) })).instantiate()
}

fn lookup_for_new(name: &CStr) -> &'static TypeImpl {
    match lookup(name) {
        Some(t) => t,
        None => die(&format!(
            "object_new: unknown type '{}'",
            name.to_string_lossy()
        )),
    }
}

/// A type that a hot path instantiates by its constant name, looked up
/// (and its layout worked out) once: `object_new` by name costs a
/// registry lookup, a lock and string comparisons, per object, which is
/// most of what creating an accepted client's channel costs otherwise.
pub(crate) struct CachedType {
    name: &'static CStr,
    layout: OnceLock<Layout>,
}

impl CachedType {
    pub(crate) const fn new(name: &'static CStr) -> CachedType {
        CachedType {
            name,
            layout: OnceLock::new(),
        }
    }

    /// As `object_new(name)`.
    pub(crate) fn object_new(&self) -> *mut sys::Object {
        self.layout
            .get_or_init(|| Layout::of(lookup_for_new(self.name)))
            .instantiate()
    }
}

type InstanceFn = unsafe extern "C" fn(*mut sys::Object);

/// What creating an instance of a type takes, as QEMU's
/// object_new_with_type() works it out.
struct Layout {
    /// The class, as an address (`*mut ObjectClass`).
    class: usize,
    size: usize,
    align: usize,
    /// The types' instance_init, the root's first.
    init: Vec<InstanceFn>,
    /// Their instance_post_init, the most derived first.
    post_init: Vec<InstanceFn>,
}

impl Layout {
    fn of(t: &'static TypeImpl) -> Layout {
        if t.info.abstract_ {
            die(&format!(
                "object_new: cannot instantiate abstract type '{}'",
                t.name_str()
            ));
        }
        let size = t.instance_size();
        if size < size_of::<sys::Object>() {
            die(&format!(
                "object_new: instance size {size} of '{}' is smaller than Object",
                t.name_str()
            ));
        }
        let mut init: Vec<InstanceFn> = t.ancestry().filter_map(|a| a.info.instance_init).collect();
        init.reverse();
        Layout {
            class: t.class() as usize,
            size,
            align: t.instance_align(),
            init,
            post_init: t
                .ancestry()
                .filter_map(|a| a.info.instance_post_init)
                .collect(),
        }
    }

    fn instantiate(&self) -> *mut sys::Object {
        let size = self.size;
        // glibc's malloc aligns to 16 bytes; larger alignments need
        // posix_memalign and therefore free() instead of g_free().
        let (obj, free): (*mut sys::Object, sys::ObjectFree) = if self.align <= 16 {
            // As QEMU: g_malloc then zeroing (glibc's calloc skips the
            // thread's cache of freed blocks, which is where an accepted
            // client's channel finds the last one's memory).
            // SAFETY: g_malloc aborts rather than returning NULL.
            let p = unsafe { sys::g_malloc(size) };
            (p.cast(), Some(sys::g_free))
        } else {
            let mut p: *mut c_void = ptr::null_mut();
            // SAFETY: p is a valid out pointer; align is a power of two
            // per TypeInfo's contract (posix_memalign checks it).
            if unsafe { libc::posix_memalign(&mut p, self.align, size) } != 0 {
                die("object_new: out of memory");
            }
            (p.cast(), Some(libc::free))
        };
        // SAFETY: obj has size writable bytes, at least an Object.
        unsafe {
            ptr::write_bytes(obj.cast::<u8>(), 0, size);
            (*obj).class = self.class as *mut sys::ObjectClass;
            (*obj).free = free;
            (*obj).ref_ = 1;
        }
        for f in self.init.iter().chain(&self.post_init) {
            // SAFETY: registered C callbacks, called on a fresh instance
            // of their type, in QEMU's order.
            unsafe { f(obj) };
        }
        obj
    }
}

/// # Safety
/// `obj` is NULL or a live object.
#[no_mangle]
pub unsafe extern "C" fn object_ref(obj: *mut c_void) -> *mut sys::Object {
    let obj = obj.cast::<sys::Object>();
    if obj.is_null() {
        return obj;
    }
    // SAFETY: obj is live, its `ref` field is only accessed atomically.
    let r = unsafe { AtomicU32::from_ptr(ptr::addr_of_mut!((*obj).ref_)) };
    // As Arc: a new reference is derived from an existing one, so no
    // ordering is needed here.
    r.fetch_add(1, Ordering::Relaxed);
    obj
}

/// # Safety
/// `obj` is NULL or a live object whose reference the caller gives up.
#[no_mangle]
pub unsafe extern "C" fn object_unref(obj: *mut c_void) {
    let obj = obj.cast::<sys::Object>();
    if obj.is_null() {
        return;
    }
    // SAFETY: obj is live, its `ref` field is only accessed atomically.
    let r = unsafe { AtomicU32::from_ptr(ptr::addr_of_mut!((*obj).ref_)) };
    match r.fetch_sub(1, Ordering::AcqRel) {
        0 => die(&format!(
            "object_unref: object {obj:p} has no references left"
        )),
        1 => {}
        _ => return,
    }
    // SAFETY: that was the last reference: nobody else uses obj.
    let t = unsafe { class_type((*obj).class) };
    // As QEMU's object_finalize(): properties go first, so their release
    // functions see the object before any instance_finalize.
    // SAFETY: as above.
    unsafe { crate::property::finalize(obj, true) };
    for ty in t.ancestry() {
        if let Some(fin) = ty.info.instance_finalize {
            // SAFETY: registered C callback on an instance of its type.
            unsafe { fin(obj) };
        }
    }
    // Properties added by a finalizer would otherwise leak.
    // SAFETY: as above.
    unsafe { crate::property::finalize(obj, false) };
    // SAFETY: as above.
    if let Some(free) = unsafe { (*obj).free } {
        // SAFETY: `free` matches how object_new allocated obj.
        unsafe { free(obj.cast()) };
    }
}

/// # Safety
/// `obj` is a live object.
#[no_mangle]
pub unsafe extern "C" fn object_get_typename(obj: *const sys::Object) -> *const c_char {
    // SAFETY: caller's contract.
    unsafe { class_type((*obj).class) }.name.as_ptr()
}

/// The class `klass` and those of its parent types, most derived first.
/// `klass` may be a class whose class_init is running (its parents'
/// classes are complete by then).
///
/// # Safety
/// `klass` is a live class.
pub(crate) unsafe fn class_chain(
    klass: *mut sys::ObjectClass,
) -> impl Iterator<Item = *mut sys::ObjectClass> {
    // SAFETY: caller's contract.
    let parents = unsafe { class_type(klass) }.ancestry().skip(1);
    std::iter::once(klass).chain(parents.map(|t| t.class()))
}

/// # Safety
/// `klass` is NULL or a live class; `typename` NULL or NUL-terminated.
pub(crate) unsafe fn object_class_dynamic_cast(
    klass: *mut sys::ObjectClass,
    typename: *const c_char,
) -> *mut sys::ObjectClass {
    if klass.is_null() || typename.is_null() {
        return ptr::null_mut();
    }
    // SAFETY: caller's contract.
    let (t, name) = unsafe { (class_type(klass), CStr::from_ptr(typename)) };
    match lookup(name) {
        Some(target) if t.is_a(target) => klass,
        _ => ptr::null_mut(),
    }
}

/// # Safety
/// `obj` is NULL or a live object; `typename` NULL or NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn object_dynamic_cast(
    obj: *mut sys::Object,
    typename: *const c_char,
) -> *mut sys::Object {
    if obj.is_null() {
        return obj;
    }
    // SAFETY: caller's contract.
    if unsafe { object_class_dynamic_cast((*obj).class, typename) }.is_null() {
        ptr::null_mut()
    } else {
        obj
    }
}

/// # Safety
/// As [`object_dynamic_cast`]; `file`/`func` NULL or NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn object_dynamic_cast_assert(
    obj: *mut sys::Object,
    typename: *const c_char,
    file: *const c_char,
    line: c_int,
    func: *const c_char,
) -> *mut sys::Object {
    // SAFETY: caller's contract.
    let ret = unsafe { object_dynamic_cast(obj, typename) };
    if ret.is_null() && !obj.is_null() {
        // SAFETY: caller's contract.
        unsafe { cast_failure(obj.cast(), typename, file, line, func) };
    }
    ret
}

/// # Safety
/// The strings are NULL or NUL-terminated.
unsafe fn cast_failure(
    what: *const c_void,
    typename: *const c_char,
    file: *const c_char,
    line: c_int,
    func: *const c_char,
) -> ! {
    // SAFETY: caller's contract.
    let (file, func, ty) = unsafe { (cstr(file), cstr(func), cstr(typename)) };
    let _ = writeln!(
        std::io::stderr().lock(),
        "{}:{}:{}: Object {:p} is not an instance of type {}",
        file.unwrap_or_default(),
        line,
        func.unwrap_or_default(),
        what,
        ty.unwrap_or_default()
    );
    std::process::abort();
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt;

    use super::*;
    use crate::util::testing::{in_child, run_child};

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
        lookup(name).map_or(ptr::null_mut(), |t| t.class())
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
        unsafe { (*o.cast::<Derived>()).extra = 7 };
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
        unsafe { (*k.cast::<BaseClass>()).tag = 1 };
    }
    unsafe extern "C" fn base_class_base_init(k: *mut sys::ObjectClass, _d: *const c_void) {
        // SAFETY: as above, for subclasses.
        unsafe { (*k.cast::<BaseClass>()).base_inits += 1 };
    }
    unsafe extern "C" fn derived_class_init(k: *mut sys::ObjectClass, d: *const c_void) {
        // SAFETY: as above; d is the class_data below.
        unsafe { (*k.cast::<BaseClass>()).tag += *d.cast::<u32>() };
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
                )
            };
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
                object_dynamic_cast_assert(
                    o,
                    c"test-base".as_ptr(),
                    c"f".as_ptr(),
                    1,
                    c"g".as_ptr()
                ),
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
            c"interface",
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
        let out = run_child("qom::tests::cast_assert_failure_aborts");
        assert_eq!(out.status.signal(), Some(libc::SIGABRT));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("f.c:3:fn: Object 0x"), "{err}");
        assert!(
            err.contains("is not an instance of type qio-channel"),
            "{err}"
        );
    }
}
