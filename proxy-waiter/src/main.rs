//! `proxy-waiter`: see the library documentation or `proxy-waiter --help`.
//!
//! With `--features tiny` there is no std: the C runtime calls `main`, memory comes from the
//! C allocator and a panic exits 101. That is what makes a static binary under 1 MiB.

#![cfg_attr(feature = "tiny", no_std, no_main)]

#[cfg(not(feature = "tiny"))]
fn main() {
    std::process::exit(proxy_waiter::run(std::env::args().skip(1).collect()));
}

#[cfg(feature = "tiny")]
mod tiny {
    extern crate alloc;

    use alloc::{string::String, vec::Vec};
    use core::{
        alloc::{GlobalAlloc, Layout},
        ffi::{CStr, c_char, c_int},
    };

    struct CAllocator;

    // SAFETY: forwards to the C allocator, which honours any alignment through
    // posix_memalign and returns null on failure as GlobalAlloc requires.
    unsafe impl GlobalAlloc for CAllocator {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            let mut ptr = core::ptr::null_mut();
            let align = layout.align().max(core::mem::size_of::<usize>());
            // SAFETY: align is a power of two and a multiple of the pointer size.
            match unsafe { libc::posix_memalign(&mut ptr, align, layout.size()) } {
                0 => ptr.cast(),
                _ => core::ptr::null_mut(),
            }
        }

        unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
            // SAFETY: ptr came from posix_memalign above.
            unsafe { libc::free(ptr.cast()) }
        }
    }

    #[global_allocator]
    static ALLOCATOR: CAllocator = CAllocator;

    #[panic_handler]
    fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
        let message = alloc::format!("proxy-waiter: internal error: {info}\n");
        // SAFETY: writes a buffer we own to stderr, then exits without unwinding.
        unsafe {
            libc::write(2, message.as_ptr().cast(), message.len());
            libc::_exit(101)
        }
    }

    // The precompiled core and alloc carry unwind tables that name this symbol; with
    // panic = "abort" nothing ever unwinds, so it is never called.
    #[unsafe(no_mangle)]
    extern "C" fn rust_eh_personality() {}

    #[unsafe(no_mangle)]
    extern "C" fn main(argc: c_int, argv: *const *const c_char) -> c_int {
        let count = usize::try_from(argc).unwrap_or(0);
        let args: Vec<String> = (1..count)
            .map(|i| {
                // SAFETY: the C runtime passes argc valid NUL-terminated strings in argv.
                let arg = unsafe { CStr::from_ptr(*argv.add(i)) };
                String::from_utf8_lossy(arg.to_bytes()).into_owned()
            })
            .collect();
        proxy_waiter::run(args)
    }
}
