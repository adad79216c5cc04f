//! Blocking frame I/O over `std::net` streams: the NameServer's connections and the broker's
//! calls to NameServers (control traffic, a few frames a second).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

use bytes::BytesMut;
use shardmq_protocol::{Frame, FrameDecoder, FrameError, Request};

#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    #[error("{addr}: {source}")]
    Io {
        addr: String,
        source: std::io::Error,
    },
    #[error("{addr}: {source}")]
    Frame { addr: String, source: FrameError },
    #[error("{addr} closed the connection before answering")]
    Closed { addr: String },
    #[error("{addr} answered request {got} to request {want}")]
    Mismatch { addr: String, got: u64, want: u64 },
}

/// Reads the next whole frame; `Ok(None)` on a clean end of stream between frames.
pub fn read_frame(
    stream: &mut impl Read,
    decoder: &FrameDecoder,
    buf: &mut BytesMut,
) -> Result<Option<Frame>, ReadFrameError> {
    read_frame_with(stream, decoder, buf, |_| Ok(()))
}

/// [`read_frame`], calling `before_read` with what is buffered before every read (to set a
/// deadline on the socket, say); its error ends the read.
pub fn read_frame_with(
    stream: &mut impl Read,
    decoder: &FrameDecoder,
    buf: &mut BytesMut,
    mut before_read: impl FnMut(&BytesMut) -> std::io::Result<()>,
) -> Result<Option<Frame>, ReadFrameError> {
    loop {
        if let Some(f) = decoder.decode(buf)? {
            return Ok(Some(f));
        }
        before_read(buf)?;
        let want = match decoder.needed(buf)? {
            Some(total) => total - buf.len(),
            None => 4096,
        };
        let at = buf.len();
        buf.resize(at + want.min(1 << 20), 0);
        let n = match stream.read(&mut buf[at..]) {
            Ok(n) => n,
            Err(e) => {
                buf.truncate(at);
                return Err(ReadFrameError::Io(e));
            }
        };
        buf.truncate(at + n);
        if n == 0 {
            return if buf.is_empty() {
                Ok(None)
            } else {
                Err(ReadFrameError::Truncated)
            };
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReadFrameError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("the stream ended inside a frame")]
    Truncated,
}

/// One request, one response, on a fresh connection (NameServer registration and queries).
pub fn call(addr: &str, request: &Request, timeout: Duration) -> Result<Frame, RpcError> {
    Conn::connect(addr, timeout)?.call(request)
}

/// A connection for one request at a time (control traffic and the admin commands).
pub struct Conn {
    addr: String,
    stream: TcpStream,
    buf: BytesMut,
    next_id: u64,
}

impl Conn {
    pub fn connect(addr: &str, timeout: Duration) -> Result<Conn, RpcError> {
        let io = |source| RpcError::Io {
            addr: addr.to_owned(),
            source,
        };
        let target: SocketAddr = addr
            .to_socket_addrs()
            .map_err(io)?
            .next()
            .ok_or_else(|| io(std::io::Error::other("no address")))?;
        let stream = TcpStream::connect_timeout(&target, timeout).map_err(io)?;
        stream.set_read_timeout(Some(timeout)).map_err(io)?;
        stream.set_write_timeout(Some(timeout)).map_err(io)?;
        let _ = stream.set_nodelay(true);
        Ok(Conn {
            addr: addr.to_owned(),
            stream,
            buf: BytesMut::new(),
            next_id: 1,
        })
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Sends `request` and waits for its response (the read timeout bounds the wait).
    pub fn call(&mut self, request: &Request) -> Result<Frame, RpcError> {
        let addr = self.addr.clone();
        let io = |source| RpcError::Io {
            addr: addr.clone(),
            source,
        };
        let id = self.next_id;
        self.next_id += 1;
        self.stream
            .write_all(&request.to_frame(id, false).to_bytes())
            .map_err(io)?;
        loop {
            return match read_frame(&mut self.stream, &FrameDecoder::default(), &mut self.buf) {
                // A request from the peer (a broker's group notification): not ours to answer.
                Ok(Some(f)) if !f.header.is_response() => continue,
                Ok(Some(f)) if f.header.request_id == id => Ok(f),
                Ok(Some(f)) => Err(RpcError::Mismatch {
                    addr: addr.clone(),
                    got: f.header.request_id,
                    want: id,
                }),
                Ok(None) | Err(ReadFrameError::Truncated) => {
                    Err(RpcError::Closed { addr: addr.clone() })
                }
                Err(ReadFrameError::Io(e)) => Err(io(e)),
                Err(ReadFrameError::Frame(source)) => Err(RpcError::Frame {
                    addr: addr.clone(),
                    source,
                }),
            };
        }
    }

    /// Sets how long a call waits for its response.
    pub fn set_timeout(&self, timeout: Duration) -> Result<(), RpcError> {
        self.stream
            .set_read_timeout(Some(timeout))
            .map_err(|source| RpcError::Io {
                addr: self.addr.clone(),
                source,
            })
    }
}
