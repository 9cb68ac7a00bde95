//! What the gRPC port listens on: a TCP address, or a unix domain socket
//! (`server.grpc: unix:PATH`; envoyproxy/ratelimit's `GRPC_UDS`), for an
//! Envoy on the same host or in the same pod that reaches the service
//! through a shared directory rather than the network.
//!
//! A socket's path is a file, so it outlives a process that was killed.
//! Binding one that is left over would fail ("address in use") and keep the
//! service down until someone deletes it, so [`GrpcListener::bind`] first
//! connects to it: refused means no process listens there, and the file is
//! removed; accepted, or a full backlog, means another server is live on
//! it, and binding stops with an error rather than stealing its clients. A
//! path that is not a socket is never removed. The file is removed again
//! when the listener closes (at shutdown), unless another process has bound
//! the path since.
//!
//! Probing and removing are two steps, so two tollgates starting on one
//! path could each find the old file dead, and the second remove the
//! first's new socket. Each therefore holds an exclusive lock (`flock`) on
//! `PATH.lock` from before the probe until its socket file is removed: the
//! second finds it locked and stops ("another tollgate is serving on this
//! socket"). The lock file stays (removing it would reopen the race).

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
#[cfg(unix)]
use tokio::net::{UnixListener, UnixStream};
use tokio_util::either::Either;

/// Where the gRPC port listens (`server.grpc`, `--grpc`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    /// TCP, on this address.
    Tcp(SocketAddr),
    /// A unix domain socket at this path; on Linux a path starting with `@`
    /// names a socket in the abstract namespace (no file), as Go's `net`
    /// package (and so `GRPC_UDS`) reads it.
    Unix(PathBuf),
}

/// The longest path a unix socket address holds (`sun_path` is 108 bytes
/// on Linux, the last one a NUL).
pub const MAX_UNIX_PATH_BYTES: usize = 107;

impl FromStr for ListenAddr {
    type Err = String;

    /// `IP:PORT`, or `unix:PATH` (also `unix://` followed by an absolute
    /// path, as gRPC names it: `unix:///run/tollgate.sock`).
    fn from_str(text: &str) -> Result<Self, String> {
        let Some(rest) = text.strip_prefix("unix:") else {
            return text
                .parse()
                .map(ListenAddr::Tcp)
                .map_err(|_| format!("`{text}` is not an address: expected IP:PORT or unix:PATH"));
        };
        let path = match rest.strip_prefix("//") {
            Some(absolute) if absolute.starts_with('/') => absolute,
            Some(_) => {
                return Err(format!(
                    "`{text}`: unix:// needs an absolute path (unix:///run/tollgate.sock); \
                     unix:PATH takes a relative one"
                ));
            }
            None => rest,
        };
        if path.is_empty() || path == "@" {
            return Err(format!("`{text}`: the unix socket path is empty"));
        }
        if path.contains('\0') {
            return Err(format!("`{text}`: a unix socket path cannot contain NUL"));
        }
        // An abstract name's `@` stands for the address's leading NUL, so
        // it is not one of the path's bytes.
        let abstract_name = cfg!(target_os = "linux") && path.starts_with('@');
        let max = MAX_UNIX_PATH_BYTES + usize::from(abstract_name);
        if path.len() > max {
            return Err(format!(
                "`{text}`: a unix socket path is at most {MAX_UNIX_PATH_BYTES} bytes (an abstract name after its `@`); this one has {}",
                path.len() - usize::from(abstract_name)
            ));
        }
        Ok(ListenAddr::Unix(PathBuf::from(path)))
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Tcp(addr) => addr.fmt(f),
            // `unix://` keeps a path starting with `//` whole (see
            // `from_str`).
            ListenAddr::Unix(path) if path.as_os_str().as_encoded_bytes().starts_with(b"//") => {
                write!(f, "unix://{}", path.display())
            }
            ListenAddr::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

impl From<SocketAddr> for ListenAddr {
    fn from(addr: SocketAddr) -> Self {
        ListenAddr::Tcp(addr)
    }
}

/// A bound gRPC listener, for [`Listeners::grpc`](crate::Listeners::grpc):
/// a [`TcpListener`] (`.into()`), or a unix socket bound by
/// [`GrpcListener::bind`].
#[derive(Debug)]
pub struct GrpcListener(pub(crate) Listener);

impl From<TcpListener> for GrpcListener {
    fn from(listener: TcpListener) -> Self {
        GrpcListener(Listener::Tcp(listener))
    }
}

impl GrpcListener {
    /// Binds `addr`. A unix socket's path left by a process that is gone is
    /// removed first; one another process listens on is an error
    /// ([`io::ErrorKind::AddrInUse`]), as is a path that is not a socket
    /// ([`io::ErrorKind::AlreadyExists`]).
    ///
    /// # Errors
    /// When the address cannot be bound.
    pub async fn bind(addr: &ListenAddr) -> io::Result<GrpcListener> {
        match addr {
            ListenAddr::Tcp(addr) => Ok(TcpListener::bind(addr).await?.into()),
            #[cfg(unix)]
            ListenAddr::Unix(path) => bind_unix(path).await.map(GrpcListener),
            #[cfg(not(unix))]
            ListenAddr::Unix(_) => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "unix sockets are not supported on this platform",
            )),
        }
    }

    /// The address it listens on (a TCP port of 0 resolved).
    pub fn local_addr(&self) -> io::Result<ListenAddr> {
        match &self.0 {
            Listener::Tcp(listener) => listener.local_addr().map(ListenAddr::Tcp),
            #[cfg(unix)]
            Listener::Unix { path, .. } => Ok(ListenAddr::Unix(path.clone())),
        }
    }
}

/// A listening socket.
#[derive(Debug)]
pub(crate) enum Listener {
    Tcp(TcpListener),
    #[cfg(unix)]
    Unix {
        listener: UnixListener,
        path: PathBuf,
        /// Removes the socket's file when the listener closes; `None` for
        /// an abstract socket.
        _file: Option<SocketFile>,
    },
}

impl From<TcpListener> for Listener {
    fn from(listener: TcpListener) -> Self {
        Listener::Tcp(listener)
    }
}

impl From<GrpcListener> for Listener {
    fn from(listener: GrpcListener) -> Self {
        listener.0
    }
}

impl Listener {
    /// The next connection and its peer.
    pub(crate) async fn accept(&self) -> io::Result<(Stream, Peer)> {
        match self {
            Listener::Tcp(listener) => {
                let (stream, peer) = listener.accept().await?;
                // A decision is a small write, and Nagle's algorithm
                // meeting the client's delayed ACK would hold some of them
                // for 40 ms.
                if let Err(error) = stream.set_nodelay(true) {
                    tracing::debug!(%error, "could not set TCP_NODELAY");
                }
                Ok((Either::Left(stream), Peer::Tcp(peer)))
            }
            #[cfg(unix)]
            Listener::Unix { listener, .. } => {
                let (stream, _) = listener.accept().await?;
                Ok((Either::Right(stream), Peer::Unix))
            }
        }
    }
}

/// An accepted connection.
#[cfg(unix)]
pub(crate) type Stream = Either<TcpStream, UnixStream>;
/// An accepted connection (only TCP here).
#[cfg(not(unix))]
pub(crate) type Stream = Either<TcpStream, TcpStream>;

/// Who is at the other end of a connection, for logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Peer {
    Tcp(SocketAddr),
    /// A unix socket's client: unnamed.
    Unix,
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Peer::Tcp(addr) => addr.fmt(f),
            Peer::Unix => f.write_str("unix socket client"),
        }
    }
}

/// How long [`bind_unix`] waits for a listener found on the path to accept
/// its probe. On Linux a probe never waits (a full backlog fails it at
/// once, and that is taken as a live server); this bounds it elsewhere.
#[cfg(unix)]
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Binds a unix socket at `path`, replacing a socket file nothing listens
/// on (see the module's documentation).
#[cfg(unix)]
async fn bind_unix(path: &Path) -> io::Result<Listener> {
    #[cfg(target_os = "linux")]
    if let Some(name) = path.to_str().and_then(|p| p.strip_prefix('@')) {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
        let listener = std::os::unix::net::UnixListener::bind_addr(&addr)?;
        listener.set_nonblocking(true)?;
        return Ok(Listener::Unix {
            listener: UnixListener::from_std(listener)?,
            path: path.to_owned(),
            _file: None,
        });
    }
    let lock = lock_beside(path)?;
    remove_if_stale(path).await?;
    let listener = UnixListener::bind(path)?;
    let file = SocketFile::new(path, lock)?;
    Ok(Listener::Unix {
        listener,
        path: path.to_owned(),
        _file: Some(file),
    })
}

/// An exclusive lock on `PATH.lock` (created if need be), held while the
/// socket at `path` is ours; an error when another process holds it.
#[cfg(unix)]
fn lock_beside(path: &Path) -> io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut lock_path = path.as_os_str().to_owned();
    lock_path.push(".lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&lock_path)?;
    match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(file),
        Err(rustix::io::Errno::WOULDBLOCK) => Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            "another tollgate is serving on this unix socket (its .lock file is locked)",
        )),
        Err(error) => Err(error.into()),
    }
}

/// Removes `path` when it is a socket no process listens on; an error when
/// one does, or when it is not a socket.
#[cfg(unix)]
async fn remove_if_stale(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    let metadata = match std::fs::symlink_metadata(path) {
        Ok(metadata) => metadata,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(error) => return Err(error),
    };
    if !metadata.file_type().is_socket() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "the path exists and is not a socket (left as it is)",
        ));
    }
    let live = || {
        io::Error::new(
            io::ErrorKind::AddrInUse,
            "another process is listening on this unix socket",
        )
    };
    match tokio::time::timeout(PROBE_TIMEOUT, UnixStream::connect(path)).await {
        Ok(Err(error)) if error.kind() == io::ErrorKind::ConnectionRefused => {
            match std::fs::remove_file(path) {
                // Gone meanwhile (its server closed): as good.
                Err(error) if error.kind() != io::ErrorKind::NotFound => return Err(error),
                _ => {}
            }
            tracing::info!(path = %path.display(), "removed a unix socket no process listens on (left by a previous run)");
            Ok(())
        }
        // Gone meanwhile: nothing to remove.
        Ok(Err(error)) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        // A full backlog: a live server that is busy.
        Ok(Err(error)) if error.kind() == io::ErrorKind::WouldBlock => Err(live()),
        Ok(Err(error)) => Err(io::Error::new(
            error.kind(),
            format!("cannot probe the unix socket found at the path: {error}"),
        )),
        Ok(Ok(_)) | Err(_) => Err(live()),
    }
}

/// The file of a bound unix socket, removed when this is dropped unless the
/// path has been bound again since (another file is there); the lock beside
/// it is released after.
#[cfg(unix)]
#[derive(Debug)]
pub(crate) struct SocketFile {
    path: PathBuf,
    /// The file's device and inode when bound.
    id: (u64, u64),
    _lock: std::fs::File,
}

#[cfg(unix)]
impl SocketFile {
    fn new(path: &Path, lock: std::fs::File) -> io::Result<Self> {
        Ok(SocketFile {
            path: path.to_owned(),
            id: file_id(path)?,
            _lock: lock,
        })
    }
}

#[cfg(unix)]
fn file_id(path: &Path) -> io::Result<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let metadata = std::fs::symlink_metadata(path)?;
    Ok((metadata.dev(), metadata.ino()))
}

#[cfg(unix)]
impl Drop for SocketFile {
    fn drop(&mut self) {
        if file_id(&self.path).is_ok_and(|id| id == self.id) {
            if let Err(error) = std::fs::remove_file(&self.path) {
                tracing::warn!(path = %self.path.display(), %error, "cannot remove the gRPC unix socket");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_tcp_or_unix_paths() {
        assert_eq!(
            "127.0.0.1:8081".parse(),
            Ok(ListenAddr::Tcp("127.0.0.1:8081".parse().unwrap()))
        );
        assert_eq!(
            "[::1]:0".parse(),
            Ok(ListenAddr::Tcp("[::1]:0".parse().unwrap()))
        );
        for (text, path) in [
            ("unix:/run/rl.sock", "/run/rl.sock"),
            ("unix:///run/rl.sock", "/run/rl.sock"),
            ("unix:rl.sock", "rl.sock"),
            ("unix:@ratelimit", "@ratelimit"),
        ] {
            assert_eq!(text.parse(), Ok(ListenAddr::Unix(PathBuf::from(path))));
        }
        let longest = format!("unix:/{}", "s".repeat(MAX_UNIX_PATH_BYTES - 1));
        assert!(longest.parse::<ListenAddr>().is_ok());
        #[cfg(target_os = "linux")]
        {
            // An abstract name of 107 bytes after its `@`, as Go takes it.
            let name = format!("unix:@{}", "n".repeat(MAX_UNIX_PATH_BYTES));
            assert!(name.parse::<ListenAddr>().is_ok());
            let error = format!("{name}n").parse::<ListenAddr>().unwrap_err();
            assert!(error.contains("this one has 108"), "{error}");
        }
        for (bad, why) in [
            ("localhost:8081", "expected IP:PORT or unix:PATH"),
            ("/run/rl.sock", "expected IP:PORT or unix:PATH"),
            ("unix:", "is empty"),
            ("unix:@", "is empty"),
            ("unix://run/rl.sock", "needs an absolute path"),
            ("unix:/a\0b", "cannot contain NUL"),
            (
                &format!("{longest}s"),
                "at most 107 bytes (an abstract name after its `@`); this one has 108",
            ),
        ] {
            let error = bad.parse::<ListenAddr>().unwrap_err();
            assert!(error.contains(why), "{bad:?}: {error}");
        }
    }

    #[test]
    fn addresses_print_as_they_parse() {
        for text in [
            "127.0.0.1:8081",
            "[::1]:9",
            "unix:/run/rl.sock",
            "unix:rl.sock",
            "unix:@rl",
            "unix:////run/rl.sock",
        ] {
            let addr: ListenAddr = text.parse().unwrap();
            assert_eq!(addr.to_string(), text);
            assert_eq!(addr.to_string().parse(), Ok(addr));
        }
    }
}
