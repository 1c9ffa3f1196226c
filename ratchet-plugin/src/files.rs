//! Files an operator or a runtime names by path (topologies, configs, TLS
//! material, log files), opened so that no path can hang or swamp a verb: a
//! FIFO is opened without waiting for its other end and then refused, a
//! device or directory is refused, and a read stops at a size cap.

use std::{
    fs::{File, OpenOptions},
    io::{self, Read},
    os::unix::fs::{FileTypeExt, OpenOptionsExt},
    path::Path,
    time::Duration,
};

use nix::fcntl::{Flock, FlockArg};

/// The most ratchet reads from any one input file: far above a topology of
/// thousands of links, far below what would hurt a node.
pub const MAX_INPUT: u64 = 16 << 20;

/// How long a verb waits for another process to let go of the store (or a
/// node lock) before it answers "try again" (CNI error 11).
pub const LOCK_WAIT: Duration = Duration::from_secs(10);

/// Reads a whole regular file of at most `limit` bytes.
pub fn read_bounded(path: &Path, limit: u64) -> io::Result<Vec<u8>> {
    let file = OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY).open(path)?;
    let kind = file.metadata()?.file_type();
    if !kind.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("is a {}, not a regular file", describe(kind)),
        ));
    }
    let mut bytes = Vec::new();
    file.take(limit + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("is larger than {limit} bytes")));
    }
    Ok(bytes)
}

/// Takes an exclusive `flock` on `file`, waiting at most `wait`: a process
/// that holds a node lock forever (stopped, or stuck) must cost the verbs
/// behind it an error they can retry, not a hang. Uncontended, it is one
/// syscall; contended, the kernel's blocking wait (which wakes the next
/// waiter as soon as the lock is free) runs on a helper thread. A lock that
/// thread takes after we stopped waiting goes at once: its channel is gone.
pub fn lock_exclusive(file: File, wait: Duration) -> io::Result<Flock<File>> {
    let file = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => return Ok(lock),
        Err((file, nix::Error::EWOULDBLOCK)) => file,
        Err((_, error)) => return Err(error.into()),
    };
    let (taken, lock) = std::sync::mpsc::sync_channel(1);
    std::thread::spawn(move || {
        let _ = taken.send(Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, error)| error));
    });
    match lock.recv_timeout(wait) {
        Ok(taken) => taken.map_err(io::Error::from),
        Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, format!("still locked after {wait:?}"))),
    }
}

/// Takes an exclusive lock on `path` (made if missing, root-only) if no
/// other process holds it; `None` when one does. For locks held as long as
/// a process runs (the agent's), so that others can tell it runs.
pub fn try_lock(path: &Path) -> io::Result<Option<Flock<File>>> {
    let file = OpenOptions::new().create(true).truncate(false).write(true).mode(0o600).open(path)?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => Ok(Some(lock)),
        Err((_, nix::Error::EWOULDBLOCK)) => Ok(None),
        Err((_, error)) => Err(error.into()),
    }
}

/// [`read_bounded`] with [`MAX_INPUT`], as UTF-8 text.
pub fn read_text(path: &Path) -> io::Result<String> {
    String::from_utf8(read_bounded(path, MAX_INPUT)?)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "is not UTF-8 text"))
}

/// Opens a log file for appending, creating it if needed: a regular file,
/// or a character device such as /dev/null. A FIFO with no reader fails at
/// once instead of blocking; one with a reader is refused like a directory
/// or a socket, since a write to it could block the verb.
pub fn open_log(path: &Path) -> io::Result<File> {
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)?;
    let kind = file.metadata()?.file_type();
    if !kind.is_file() && !kind.is_char_device() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("is a {}, not a regular file", describe(kind)),
        ));
    }
    Ok(file)
}

fn describe(kind: std::fs::FileType) -> &'static str {
    if kind.is_dir() {
        "directory"
    } else if kind.is_fifo() {
        "FIFO"
    } else if kind.is_socket() {
        "socket"
    } else if kind.is_block_device() {
        "block device"
    } else if kind.is_char_device() {
        "character device"
    } else {
        "special file"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_what_is_not_a_regular_file_and_caps_the_size() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        for (path, says) in [(fifo.as_path(), "FIFO"), (dir.path(), "directory"), (Path::new("/dev/zero"), "character")]
        {
            let error = read_bounded(path, 10).unwrap_err();
            assert!(error.to_string().contains(says), "{}: {error}", path.display());
        }
        assert!(open_log(&fifo).is_err(), "a FIFO with no reader fails at once");
        assert!(open_log(dir.path()).is_err());
        let big = dir.path().join("big");
        std::fs::write(&big, [b'x'; 11]).unwrap();
        assert!(read_bounded(&big, 10).unwrap_err().to_string().contains("larger than 10"));
        assert_eq!(read_bounded(&big, 11).unwrap().len(), 11);
    }

    #[test]
    fn a_lock_held_elsewhere_is_waited_for_a_bounded_time() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lock");
        let open = || File::create(&path).unwrap();
        let held = lock_exclusive(open(), Duration::ZERO).unwrap();
        let refused = lock_exclusive(open(), Duration::from_millis(50)).unwrap_err();
        assert_eq!(refused.kind(), io::ErrorKind::TimedOut);
        let release = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            drop(held);
        });
        lock_exclusive(open(), Duration::from_secs(5)).expect("taken once the holder lets go");
        release.join().unwrap();
    }
}
