//! Step 4: cffi's `struct _cffi_externpy_s` (one per `extern "Python"` function, in
//! the generated module), as bindgen read it from the cffi tree's `parse_c_type.h`
//! at build time (`build.rs`). bindgen also asserts, at compile time, that rustc lays
//! the struct out as clang did; the backend checks it against its own C compiler at
//! module init (`cffi_ft_xpy_check_layout`).

#[allow(non_camel_case_types, dead_code)]
mod generated {
    include!(concat!(env!("OUT_DIR"), "/externpy.rs"));
}

pub use generated::_cffi_externpy_s;

#[cfg(test)]
mod tests {
    use super::_cffi_externpy_s;
    use std::mem::{offset_of, size_of};

    /// cffi 1.17.1's definition is `{ const char *name; size_t size_of_result; void
    /// *reserved1, *reserved2; }`: four pointer-sized fields in order. The edge
    /// depends on `reserved1` being a pointer-aligned pointer field.
    #[test]
    fn the_generated_layout_is_cffis() {
        let word = size_of::<usize>();
        assert_eq!(size_of::<_cffi_externpy_s>(), 4 * word);
        assert_eq!(offset_of!(_cffi_externpy_s, name), 0);
        assert_eq!(offset_of!(_cffi_externpy_s, size_of_result), word);
        assert_eq!(offset_of!(_cffi_externpy_s, reserved1), 2 * word);
        assert_eq!(offset_of!(_cffi_externpy_s, reserved2), 3 * word);
        assert_eq!(offset_of!(_cffi_externpy_s, reserved1) % std::mem::align_of::<*mut ()>(), 0);
    }
}
