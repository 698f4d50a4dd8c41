//! CPU backend. [`reference`] is the oracle every other backend is tested against.

pub mod reference;
