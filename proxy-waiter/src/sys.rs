//! The few system calls the waiter needs, over libc, with owned descriptors and errno errors.
//! (No std here: see the crate documentation.)

use alloc::{ffi::CString, string::String, vec::Vec};
use core::{ffi::c_int, fmt, mem, time::Duration};

/// An errno value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Errno(pub c_int);

impl Errno {
    fn last() -> Self {
        // SAFETY: __errno_location always returns the calling thread's errno.
        Self(unsafe { *libc::__errno_location() })
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self.0 {
            libc::ENOENT => "no such file or directory",
            libc::EACCES => "permission denied",
            libc::EADDRINUSE => "address in use",
            libc::ECONNREFUSED => "connection refused",
            libc::ECONNRESET => "connection reset",
            libc::EAGAIN => "timed out",
            libc::EPIPE => "broken pipe",
            libc::EROFS => "read-only file system",
            libc::ENOSPC => "no space left on device",
            _ => "",
        };
        write!(f, "{name} (errno {})", self.0)
    }
}

pub type Result<T> = core::result::Result<T, Errno>;

fn check(ret: isize) -> Result<usize> {
    usize::try_from(ret).map_err(|_| Errno::last())
}

/// An owned file descriptor, closed on drop.
#[derive(Debug)]
pub struct Fd(c_int);

impl Fd {
    fn new(fd: c_int) -> Result<Self> {
        if fd < 0 {
            Err(Errno::last())
        } else {
            Ok(Self(fd))
        }
    }

    pub fn raw(&self) -> c_int {
        self.0
    }
}

impl Drop for Fd {
    fn drop(&mut self) {
        // SAFETY: we own this descriptor and close it once.
        unsafe { libc::close(self.0) };
    }
}

/// Writes all of `bytes` to a descriptor.
pub fn write_all(fd: c_int, mut bytes: &[u8]) -> Result<()> {
    while !bytes.is_empty() {
        // SAFETY: the pointer and length describe a live slice.
        match check(unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) }) {
            Ok(n) => bytes = &bytes[n..],
            Err(Errno(libc::EINTR)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// One read: the number of bytes read (0 at end of file), EAGAIN when a non-blocking
/// descriptor has nothing.
pub fn read_some(fd: c_int, buf: &mut [u8]) -> Result<usize> {
    loop {
        // SAFETY: reads into a live buffer of the given length.
        match check(unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) }) {
            Err(Errno(libc::EINTR)) => {}
            other => return other,
        }
    }
}

/// The first `length` bytes a peer sends (fewer if it ends sooner).
pub fn read_prefix(fd: c_int, length: usize) -> Result<Vec<u8>> {
    let mut prefix = alloc::vec![0u8; length];
    let mut filled = 0;
    while filled < length {
        match read_some(fd, &mut prefix[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    prefix.truncate(filled);
    Ok(prefix)
}

/// Reads until end of file, failing past `limit` bytes.
pub fn read_to_end(fd: c_int, limit: usize) -> Result<Vec<u8>> {
    read_until(fd, limit, false)
}

/// Reads a peer's reply until it closes the connection. A peer that closes without reading
/// all we sent resets the connection after its reply: that ends the reply too.
pub fn read_reply(fd: c_int, limit: usize) -> Result<Vec<u8>> {
    read_until(fd, limit, true)
}

fn read_until(fd: c_int, limit: usize, reset_ends: bool) -> Result<Vec<u8>> {
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        // SAFETY: reads into a stack buffer of the given length.
        match check(unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) }) {
            Ok(0) => return Ok(data),
            Ok(n) if data.len() + n > limit => return Err(Errno(libc::EFBIG)),
            Ok(n) => data.extend_from_slice(&buf[..n]),
            Err(Errno(libc::EINTR)) => {}
            Err(Errno(libc::ECONNRESET)) if reset_ends => return Ok(data),
            Err(e) => return Err(e),
        }
    }
}

fn c_path(path: &str) -> Result<CString> {
    CString::new(path).map_err(|_| Errno(libc::EINVAL))
}

/// The content of a small text file, or None when it cannot be read.
pub fn read_file(path: &str) -> Option<String> {
    let path = c_path(path).ok()?;
    // SAFETY: path is NUL-terminated.
    let fd =
        Fd::new(unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) }).ok()?;
    String::from_utf8(read_to_end(fd.raw(), 1 << 20).ok()?).ok()
}

/// Replaces the content of a file.
pub fn write_file(path: &str, bytes: &[u8]) -> Result<()> {
    let path = c_path(path)?;
    let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_CLOEXEC;
    // SAFETY: path is NUL-terminated.
    let fd = Fd::new(unsafe { libc::open(path.as_ptr(), flags, 0o644) })?;
    write_all(fd.raw(), bytes)
}

/// An environment variable.
pub fn env(key: &str) -> Option<String> {
    let key = CString::new(key).ok()?;
    // SAFETY: getenv returns null or a NUL-terminated string owned by the environment, which
    // nothing in this single-threaded program modifies.
    let value = unsafe { libc::getenv(key.as_ptr()) };
    if value.is_null() {
        return None;
    }
    // SAFETY: checked non-null above.
    let value = unsafe { core::ffi::CStr::from_ptr(value) };
    Some(String::from_utf8_lossy(value.to_bytes()).into_owned())
}

fn abstract_address(name: &str) -> Result<(libc::sockaddr_un, libc::socklen_t)> {
    // SAFETY: sockaddr_un is plain data; all zeroes is a valid value.
    let mut address: libc::sockaddr_un = unsafe { mem::zeroed() };
    address.sun_family = libc::AF_UNIX as libc::sa_family_t;
    // sun_path[0] stays 0: an abstract name, not a path.
    if name.len() >= address.sun_path.len() {
        return Err(Errno(libc::ENAMETOOLONG));
    }
    for (slot, byte) in address.sun_path[1..].iter_mut().zip(name.bytes()) {
        *slot = byte as libc::c_char;
    }
    let length = mem::size_of::<libc::sa_family_t>() + 1 + name.len();
    Ok((
        address,
        libc::socklen_t::try_from(length).map_err(|_| Errno(libc::EINVAL))?,
    ))
}

fn unix_socket(flags: c_int) -> Result<Fd> {
    // SAFETY: plain socket creation.
    Fd::new(unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC | flags,
            0,
        )
    })
}

/// A non-blocking listener on an abstract Unix socket.
pub fn listen(name: &str) -> Result<Fd> {
    let (address, length) = abstract_address(name)?;
    let fd = unix_socket(libc::SOCK_NONBLOCK)?;
    // SAFETY: address is a valid sockaddr_un of the given length.
    if unsafe { libc::bind(fd.raw(), (&raw const address).cast(), length) } < 0 {
        return Err(Errno::last());
    }
    // SAFETY: fd is a bound socket.
    if unsafe { libc::listen(fd.raw(), 16) } < 0 {
        return Err(Errno::last());
    }
    Ok(fd)
}

/// A blocking connection to an abstract Unix socket.
pub fn connect(name: &str) -> Result<Fd> {
    let (address, length) = abstract_address(name)?;
    let fd = unix_socket(0)?;
    // SAFETY: address is a valid sockaddr_un of the given length.
    if unsafe { libc::connect(fd.raw(), (&raw const address).cast(), length) } < 0 {
        return Err(Errno::last());
    }
    Ok(fd)
}

/// The next pending connection, blocking, or None when there is none.
pub fn accept(listener: &Fd) -> Option<Fd> {
    // SAFETY: accepts on a listening socket without asking for the peer address.
    let fd = unsafe {
        libc::accept4(
            listener.raw(),
            core::ptr::null_mut(),
            core::ptr::null_mut(),
            libc::SOCK_CLOEXEC,
        )
    };
    Fd::new(fd).ok()
}

fn set_flag(fd: &Fd, nonblocking: bool) -> Result<()> {
    // SAFETY: reads and sets the status flags of a descriptor we own.
    unsafe {
        let flags = libc::fcntl(fd.raw(), libc::F_GETFL);
        if flags < 0 {
            return Err(Errno::last());
        }
        let flags = if nonblocking {
            flags | libc::O_NONBLOCK
        } else {
            flags & !libc::O_NONBLOCK
        };
        if libc::fcntl(fd.raw(), libc::F_SETFL, flags) < 0 {
            return Err(Errno::last());
        }
    }
    Ok(())
}

pub fn set_nonblocking(fd: &Fd) -> Result<()> {
    set_flag(fd, true)
}

pub fn set_blocking(fd: &Fd) {
    let _ = set_flag(fd, false);
}

/// Bounds how long reads and writes on a socket may block.
pub fn set_timeouts(fd: &Fd, timeout: Duration) {
    let tv = libc::timeval {
        tv_sec: libc::time_t::try_from(timeout.as_secs()).unwrap_or(libc::time_t::MAX),
        tv_usec: libc::suseconds_t::from(timeout.subsec_micros()),
    };
    for option in [libc::SO_RCVTIMEO, libc::SO_SNDTIMEO] {
        // SAFETY: passes a timeval of the size given.
        unsafe {
            libc::setsockopt(
                fd.raw(),
                libc::SOL_SOCKET,
                option,
                (&raw const tv).cast(),
                mem::size_of::<libc::timeval>() as u32,
            )
        };
    }
}

/// The user id of the process at the other end of a Unix socket.
pub fn peer_uid(fd: &Fd) -> Option<u32> {
    // SAFETY: ucred is plain data.
    let mut credentials: libc::ucred = unsafe { mem::zeroed() };
    let mut length = mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: the buffer and its length match.
    let ret = unsafe {
        libc::getsockopt(
            fd.raw(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&raw mut credentials).cast(),
            &mut length,
        )
    };
    (ret == 0).then_some(credentials.uid)
}

pub fn own_uid() -> u32 {
    // SAFETY: getuid cannot fail.
    unsafe { libc::getuid() }
}

pub fn shutdown_write(fd: &Fd) -> Result<()> {
    // SAFETY: plain shutdown of a socket we own.
    if unsafe { libc::shutdown(fd.raw(), libc::SHUT_WR) } < 0 {
        Err(Errno::last())
    } else {
        Ok(())
    }
}

/// A peer that hangs up must produce EPIPE, not kill the process.
pub fn ignore_sigpipe() {
    // SAFETY: installs the predefined "ignore" disposition.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
}

/// Blocks `signals` and returns a descriptor that reads them.
pub fn signal_fd(signals: &[c_int]) -> Result<Fd> {
    // SAFETY: sigset_t is initialised by sigemptyset before use; the mask applies to this
    // single-threaded process.
    unsafe {
        let mut mask: libc::sigset_t = mem::zeroed();
        libc::sigemptyset(&mut mask);
        for &signal in signals {
            libc::sigaddset(&mut mask, signal);
        }
        if libc::sigprocmask(libc::SIG_BLOCK, &mask, core::ptr::null_mut()) < 0 {
            return Err(Errno::last());
        }
        Fd::new(libc::signalfd(
            -1,
            &mask,
            libc::SFD_NONBLOCK | libc::SFD_CLOEXEC,
        ))
    }
}

/// The next pending signal number from a signalfd.
pub fn read_signal(fd: &Fd) -> Option<c_int> {
    // SAFETY: signalfd_siginfo is plain data, read whole or not at all.
    let mut info: libc::signalfd_siginfo = unsafe { mem::zeroed() };
    let size = mem::size_of::<libc::signalfd_siginfo>();
    // SAFETY: reads into a buffer of exactly that size.
    let n = unsafe { libc::read(fd.raw(), (&raw mut info).cast(), size) };
    (usize::try_from(n) == Ok(size)).then(|| c_int::try_from(info.ssi_signo).unwrap_or(0))
}

/// A non-blocking inotify instance.
pub fn inotify() -> Result<Fd> {
    // SAFETY: plain inotify creation.
    Fd::new(unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) })
}

/// Watches a directory for anything that may replace a file in it.
pub fn watch_dir(inotify: &Fd, dir: &str) -> bool {
    let Ok(dir) = c_path(dir) else { return false };
    let mask = libc::IN_CREATE
        | libc::IN_MOVED_TO
        | libc::IN_CLOSE_WRITE
        | libc::IN_MODIFY
        | libc::IN_DELETE
        | libc::IN_ATTRIB;
    // SAFETY: dir is NUL-terminated.
    unsafe { libc::inotify_add_watch(inotify.raw(), dir.as_ptr(), mask) >= 0 }
}

/// Discards pending events of a non-blocking descriptor.
pub fn drain(fd: &Fd) {
    let mut buf = [0u8; 4096];
    // SAFETY: reads into a stack buffer of the given length.
    while unsafe { libc::read(fd.raw(), buf.as_mut_ptr().cast(), buf.len()) } > 0 {}
}

/// Waits until one of `fds` is readable or `timeout` passes; returns which are readable.
pub fn poll_readable(fds: &[c_int], timeout: Duration) -> Vec<bool> {
    let mut polled: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let millis = c_int::try_from(timeout.as_millis()).unwrap_or(c_int::MAX);
    // SAFETY: polls a live array of the given length.
    let ret = unsafe { libc::poll(polled.as_mut_ptr(), polled.len() as libc::nfds_t, millis) };
    polled.iter().map(|p| ret > 0 && p.revents != 0).collect()
}

/// Collects every exited child: as PID 1, orphans of the container end up ours.
pub fn reap_children() {
    let mut status = 0;
    // SAFETY: non-blocking wait for any child.
    while unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) } > 0 {}
}

/// Time since an arbitrary fixed point, for deadlines.
pub fn monotonic() -> Duration {
    // SAFETY: timespec is plain data filled by clock_gettime.
    let mut now: libc::timespec = unsafe { mem::zeroed() };
    // SAFETY: CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    Duration::new(
        u64::try_from(now.tv_sec).unwrap_or(0),
        u32::try_from(now.tv_nsec).unwrap_or(0),
    )
}

pub fn sleep(duration: Duration) {
    let micros = libc::c_uint::try_from(duration.as_micros()).unwrap_or(libc::c_uint::MAX);
    // SAFETY: plain sleep.
    unsafe { libc::usleep(micros) };
}

/// Prints a line to stdout.
pub fn out(line: &str) {
    let _ = write_all(1, line.as_bytes());
    let _ = write_all(1, b"\n");
}

/// Prints a line to stderr.
pub fn err(line: &str) {
    let _ = write_all(2, line.as_bytes());
    let _ = write_all(2, b"\n");
}
