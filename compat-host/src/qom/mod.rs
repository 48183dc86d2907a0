//! The QEMU Object Model subset of qom/object.h and qemu/module.h that
//! the listener and its C tests use: type registration, instances with
//! reference counts and a finalize chain, the checked casts behind
//! `OBJECT_DECLARE_SIMPLE_TYPE`, and object properties.  No interfaces, no
//! composition tree.
//!
//! # Files, bottom up
//!
//! [`types`] the type registry, classes and module init functions (and
//! `type_init!`, with which each module registers its own types);
//! [`property`] properties, which need the classes; [`object`] instances,
//! whose finalize releases their properties, and the root type `object`,
//! whose class carries the `type` property.

mod object;
mod property;
#[cfg(test)]
mod tests;
pub mod types;

pub use self::{
    object::CachedType,
    types::{register_module_init, type_info},
};
// A macro_rules! macro cannot be re-exported wider than the crate.
pub(crate) use self::types::type_init;
