//! Borrowing host memory by address, for bindings that hold CPU tensors by `data_ptr()`
//! (the Python package): the only place the CPU side turns an address into a slice.

use crate::error::{Error, Result};

/// `len` elements of `T` at `addr`, after checking that the address is non-null and
/// aligned for `T`.
///
/// # Safety
/// `addr` must point to `len` initialized `T`s that stay alive, and are not written
/// through another reference, for `'a`.
pub unsafe fn host_slice<'a, T>(arg: &'static str, addr: u64, len: usize) -> Result<&'a [T]> {
    check(arg, addr, std::mem::align_of::<T>())?;
    // SAFETY: non-null and aligned (checked); size, liveness and aliasing are the caller's.
    Ok(unsafe { std::slice::from_raw_parts(addr as usize as *const T, len) })
}

/// `len` writable elements of `T` at `addr`, checked like [`host_slice`].
///
/// # Safety
/// As [`host_slice`], and no other reference may read or write the memory for `'a`.
pub unsafe fn host_slice_mut<'a, T>(
    arg: &'static str,
    addr: u64,
    len: usize,
) -> Result<&'a mut [T]> {
    check(arg, addr, std::mem::align_of::<T>())?;
    // SAFETY: non-null and aligned (checked); the rest is the caller's contract.
    Ok(unsafe { std::slice::from_raw_parts_mut(addr as usize as *mut T, len) })
}

fn check(arg: &'static str, addr: u64, align: usize) -> Result<()> {
    if addr == 0 {
        return Err(Error::Misaligned {
            arg,
            detail: "null address".into(),
        });
    }
    if addr as usize % align != 0 {
        return Err(Error::Misaligned {
            arg,
            detail: format!("address {addr:#x} is not a multiple of {align}"),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_null_and_misaligned() {
        let v = [1u32, 2, 3];
        let a = v.as_ptr() as u64;
        // SAFETY: `v` holds 3 live u32s for the whole test.
        assert_eq!(unsafe { host_slice::<u32>("v", a, 3) }.unwrap(), &v);
        // SAFETY: rejected before any dereference.
        assert!(unsafe { host_slice::<u32>("v", 0, 3) }.is_err());
        // SAFETY: rejected before any dereference.
        assert!(unsafe { host_slice::<u32>("v", a + 1, 2) }.is_err());
    }
}
