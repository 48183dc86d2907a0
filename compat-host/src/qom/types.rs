//! Types, classes and module init functions (qom/object.h, qemu/module.h).
//!
//! Types live for the whole process: each registered `TypeInfo` is copied
//! into a leaked [`TypeImpl`], whose address is the C `Type` handle and
//! what `ObjectClass::type` points to.  The registry is a mutex-protected
//! map; user callbacks (module init functions, `class_init`, `instance_init`,
//! `instance_finalize`) always run with no lock held, so they may call back
//! into QOM.

use std::{
    collections::BTreeMap,
    ffi::{c_char, CStr, CString},
    io::Write,
    mem::size_of,
    ptr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Mutex, MutexGuard, OnceLock,
    },
};

use crate::{sys, util::cstr};

/// What a C `Type` points to.
pub struct TypeImpl {
    name: CString,
    parent_name: Option<CString>,
    /// The registered `TypeInfo` (its string pointers are not used after
    /// registration; `name`/`parent_name` hold copies).
    pub(super) info: sys::TypeInfo,
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

struct ModuleInit {
    func: unsafe extern "C" fn(),
    kind: sys::module_init_type,
    ran: bool,
}

static MODULES: Mutex<Vec<ModuleInit>> = Mutex::new(Vec::new());

/// How many `MODULE_INIT_QOM` functions have not run yet, so that type
/// lookups (every checked cast does one) skip the MODULES lock.
static QOM_PENDING: AtomicUsize = AtomicUsize::new(0);

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere must not make QOM unusable; the data stays
    // consistent because no critical section runs foreign code.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Prints a QOM usage error and aborts, as QEMU's assertions do.
pub(super) fn die(msg: &str) -> ! {
    let _ = writeln!(std::io::stderr().lock(), "qom: {msg}");
    std::process::abort();
}

/// # Safety
/// `info` points to a valid `TypeInfo` whose strings are NUL-terminated.
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
    // SAFETY: the interfaces array, if any, ends with an entry whose type
    // is NULL (QEMU's contract).
    if !info.interfaces.is_null() && unsafe { !(*info.interfaces).type_.is_null() } {
        die(&format!(
            "type '{}': interfaces are not supported",
            name.to_string_lossy()
        ));
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
        parent: OnceLock::new(),
        class: OnceLock::new(),
    }));
    types.insert(name, t);
    t
}

/// A `TypeInfo` with a name, a parent and an instance size, every other
/// field zero or NULL: the start of a built-in type's constant, which
/// sets the rest with `..type_info(...)` (`Default` is not const).
pub const fn type_info(
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

/// Looks a type up, first running pending QOM module init functions.
pub(super) fn lookup(name: &CStr) -> Option<&'static TypeImpl> {
    if QOM_PENDING.load(Ordering::Acquire) > 0 {
        run_module_init(sys::module_init_type_MODULE_INIT_QOM);
    }
    lock(&TYPES).get(name).copied()
}

impl TypeImpl {
    pub(super) fn name_str(&self) -> String {
        self.name.to_string_lossy().into_owned()
    }

    pub(super) fn parent(&self) -> Option<&'static TypeImpl> {
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
    pub(super) fn ancestry(&'static self) -> impl Iterator<Item = &'static TypeImpl> {
        std::iter::successors(Some(self), |t| t.parent())
    }

    pub(super) fn class_size(&self) -> usize {
        match (self.info.class_size, self.parent()) {
            (0, Some(p)) => p.class_size(),
            (0, None) => size_of::<sys::ObjectClass>(),
            (n, _) => n,
        }
    }

    pub(super) fn instance_size(&self) -> usize {
        match (self.info.instance_size, self.parent()) {
            (0, Some(p)) => p.instance_size(),
            (n, _) => n,
        }
    }

    pub(super) fn instance_align(&self) -> usize {
        match (self.info.instance_align, self.parent()) {
            (0, Some(p)) => p.instance_align(),
            (n, _) => n,
        }
    }

    pub(super) fn handle(&'static self) -> sys::Type {
        (self as *const TypeImpl).cast_mut().cast()
    }

    /// # Safety
    /// `t` is NULL or a `Type` handed out by this module.
    unsafe fn from_handle(t: sys::Type) -> Option<&'static TypeImpl> {
        // SAFETY: every Type is a leaked TypeImpl.
        unsafe { t.cast::<TypeImpl>().as_ref() }
    }

    /// The class, created (and `class_init` run) at first use.
    pub(super) fn class(&'static self) -> *mut sys::ObjectClass {
        *self.class.get_or_init(|| self.init_class() as usize) as *mut sys::ObjectClass
    }

    fn init_class(&'static self) -> *mut sys::ObjectClass {
        let parent = self.parent();
        let size = self.class_size();
        let parent_size = parent.map_or(0, TypeImpl::class_size);
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
            unsafe {
                ptr::copy_nonoverlapping(pc.cast::<u8>(), class.cast::<u8>(), parent_size);
            }
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
                unsafe {
                    base_init(class, self.info.class_data);
                }
            }
        }
        if let Some(class_init) = self.info.class_init {
            // SAFETY: as above.
            unsafe {
                class_init(class, self.info.class_data);
            }
        }
        class
    }

    /// Whether this type is `target` or derives from it.
    pub(super) fn is_a(&'static self, target: &'static TypeImpl) -> bool {
        self.ancestry().any(|t| ptr::eq(t, target))
    }
}

/// The type of a live class.
///
/// # Safety
/// `klass` is a live class created by this module.
pub(super) unsafe fn class_type(klass: *const sys::ObjectClass) -> &'static TypeImpl {
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
    run_module_init(type_);
}

/// QEMU's `type_init(register)`, the way QEMU's own Rust does it
/// (`module_init!`): a load-time constructor, in the section where the
/// target's loader finds constructors, that registers `register` to run
/// at `module_call_init(MODULE_INIT_QOM)` or at the first type lookup.
/// Each module registers its own types with it.
macro_rules! type_init {
    ($register:path) => {
        const _: () = {
            extern "C" fn register_at_load() {
                // SAFETY: `$register` registers types; it may run in any
                // thread, once.
                unsafe {
                    $crate::qom::register_module_init(
                        Some($register),
                        $crate::sys::module_init_type_MODULE_INIT_QOM,
                    )
                };
            }
            #[used]
            #[cfg_attr(
                not(any(target_vendor = "apple", target_os = "windows")),
                link_section = ".init_array"
            )]
            #[cfg_attr(target_vendor = "apple", link_section = "__DATA,__mod_init_func")]
            #[cfg_attr(target_os = "windows", link_section = ".CRT$XCU")]
            static REGISTER_AT_LOAD: extern "C" fn() = register_at_load;
        };
    };
}
pub(crate) use type_init;

/// # Safety
/// `info` is a valid `TypeInfo`; its callbacks and class data must stay
/// valid for the life of the process.
#[no_mangle]
pub unsafe extern "C" fn type_register_static(info: *const sys::TypeInfo) -> sys::Type {
    // SAFETY: caller's contract.
    unsafe { register(info) }.handle()
}

/// # Safety
/// `obj` is a live object.
#[no_mangle]
pub unsafe extern "C" fn object_get_typename(obj: *const sys::Object) -> *const c_char {
    // SAFETY: caller's contract.
    unsafe { class_type((*obj).class) }.name.as_ptr()
}
