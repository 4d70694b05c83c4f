//! The serve protocol on the wire: length-prefixed frames, each a JSON
//! message plus an optional binary blob, with hard size limits so a broken
//! or hostile peer cannot make the other side allocate without bound.
//!
//! A frame is `u32 json_len | json | u32 blob_len | blob` (big-endian).
//! Both directions count their bytes for the fetch report.

use std::io::{self, Read, Write};

use anyhow::Result;
use serde::{Deserialize, Serialize};

/// Protocol version; a mismatch is refused by both sides in the handshake.
/// 2: the hello carries the node's `max_file_size`.
pub const VERSION: u32 = 2;
/// Largest JSON part of a frame.
pub const MAX_JSON: usize = 16 << 20;
/// Largest blob of a frame (file data comes in several `Data` frames).
pub const MAX_BLOB: usize = 8 << 20;
/// Largest JSON part of a frame a client sends (`disco serve` refuses a
/// bigger one before reading it): a `List` of [`MAX_LIST_PATHS`] paths
/// the client sends in one frame stays under it.
pub const MAX_REQUEST_JSON: usize = 1 << 20;
/// Most paths one `List` may name (each once).
pub const MAX_LIST_PATHS: usize = 1024;
/// Longest path a request may name (Linux's PATH_MAX).
pub const MAX_PATH: usize = super::manifest::MAX_PATH;

/// One entry of a directory listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub name: String,
    /// `f` file, `d` directory, `l` symlink.
    pub kind: char,
    pub mode: u32,
    pub size: u64,
    /// md5 of a file's content, a directory's tree hash, a link's target.
    pub hash: String,
}

/// A listed directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Listing {
    pub path: String,
    pub entries: Vec<Entry>,
}

/// Every message of the protocol.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "t")]
pub enum Msg {
    /// Client → server: first frame. `max_file_size`: the largest file
    /// the node accepts; the server never reads a bigger one (absent in a
    /// version-1 hello, which is refused for its version). `candidate`:
    /// serve the candidate snapshot instead of the node's current (refused
    /// when the server has none); absent from an older client: false.
    Hello {
        version: u32,
        node: String,
        #[serde(default)]
        max_file_size: u64,
        #[serde(default)]
        candidate: bool,
    },
    /// Server → client: the snapshot this session serves and its root
    /// hash. `candidate`: in a session serving the node's current, the
    /// candidate's snapshot id when there is one and it is not what the
    /// node runs (else absent: an older client ignores it).
    Welcome {
        version: u32,
        node: String,
        snapshot: String,
        root: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        candidate: Option<String>,
    },
    /// Client → server: list these directories (relative paths, "" = root).
    List {
        paths: Vec<String>,
    },
    Listings {
        dirs: Vec<Listing>,
    },
    /// Client → server: send this file whole.
    Get {
        path: String,
    },
    /// Client → server: send a delta of this file against the signature in the blob.
    Delta {
        path: String,
    },
    /// Client → server: answer the requests sent since the last Flush.
    Flush,
    /// Server → client: a whole file follows as `Data` frames totalling `size`.
    File {
        path: String,
        size: u64,
        md5: String,
    },
    /// Server → client: a delta follows as `Data` frames totalling `size`.
    DeltaData {
        path: String,
        size: u64,
        md5: String,
    },
    Data,
    /// Client → server: a report to store (the blob is its JSON).
    Report,
    Stored,
    Bye,
    /// Either side: a fatal error, said once.
    Error {
        message: String,
    },
}

/// A message's kind, for errors: never the peer's text (it could be
/// huge or hold control characters).
pub fn describe(msg: &Msg) -> &'static str {
    match msg {
        Msg::Hello { .. } => "Hello",
        Msg::Welcome { .. } => "Welcome",
        Msg::List { .. } => "List",
        Msg::Listings { .. } => "Listings",
        Msg::Get { .. } => "Get",
        Msg::Delta { .. } => "Delta",
        Msg::Flush => "Flush",
        Msg::File { .. } => "File",
        Msg::DeltaData { .. } => "DeltaData",
        Msg::Data => "Data",
        Msg::Report => "Report",
        Msg::Stored => "Stored",
        Msg::Bye => "Bye",
        Msg::Error { .. } => "Error",
    }
}

/// An error the peer reported with a `Msg::Error` frame.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct PeerError(pub String);

/// The peer broke the protocol (a frame over a limit, a message that does
/// not parse): said to it and logged, unlike a connection that just ended.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ProtocolError(pub String);

/// Counts the bytes written to it: a message's size before it is built.
#[derive(Default)]
pub struct Counter(pub usize);

impl Write for Counter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A framed, byte-counting connection.
pub struct Wire<R: Read, W: Write> {
    r: R,
    w: W,
    pub sent: u64,
    pub received: u64,
    /// Largest JSON part accepted from the peer.
    max_json: usize,
}

impl<R: Read, W: Write> Wire<R, W> {
    pub fn new(r: R, w: W) -> Self {
        Wire {
            r,
            w,
            sent: 0,
            received: 0,
            max_json: MAX_JSON,
        }
    }

    /// Accepts JSON parts of at most `max` bytes from the peer (below
    /// [`MAX_JSON`]); a bigger frame is refused before it is read.
    pub fn limit_json(&mut self, max: usize) {
        self.max_json = max.min(MAX_JSON);
    }

    /// Sends `value` (a message's JSON, serialized straight into the
    /// writer: never built in memory) as a frame without a blob; its size
    /// is counted first, and a message over [`MAX_JSON`] is an error
    /// before a byte is sent.
    pub fn send_value<T: Serialize>(&mut self, value: &T) -> io::Result<()> {
        let mut n = Counter(0);
        serde_json::to_writer(&mut n, value).map_err(io::Error::other)?;
        if n.0 > MAX_JSON {
            return Err(io::Error::other(ProtocolError(format!(
                "a {}-byte answer is over the {MAX_JSON}-byte limit",
                n.0
            ))));
        }
        self.w.write_all(&(n.0 as u32).to_be_bytes())?;
        serde_json::to_writer(&mut self.w, value).map_err(io::Error::other)?;
        self.w.write_all(&0u32.to_be_bytes())?;
        self.sent += 8 + n.0 as u64;
        Ok(())
    }

    /// Sends a frame (flushed by [`Wire::flush`]).
    pub fn send(&mut self, msg: &Msg, blob: &[u8]) -> io::Result<()> {
        let json = serde_json::to_vec(msg).map_err(io::Error::other)?;
        self.w.write_all(&(json.len() as u32).to_be_bytes())?;
        self.w.write_all(&json)?;
        self.w.write_all(&(blob.len() as u32).to_be_bytes())?;
        self.w.write_all(blob)?;
        self.sent += 8 + json.len() as u64 + blob.len() as u64;
        Ok(())
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.w.flush()
    }

    /// The write side, to close it.
    pub fn writer(&mut self) -> &mut W {
        &mut self.w
    }

    /// Sends and flushes.
    pub fn say(&mut self, msg: &Msg, blob: &[u8]) -> io::Result<()> {
        self.send(msg, blob)?;
        self.flush()
    }

    /// Receives a frame; a peer `Error` becomes an error here.
    pub fn recv(&mut self) -> Result<(Msg, Vec<u8>)> {
        let json_len = self.read_len("frame header")? as usize;
        if json_len > self.max_json {
            return Err(ProtocolError(format!(
                "protocol error: a {json_len}-byte message is over the {}-byte limit",
                self.max_json
            ))
            .into());
        }
        let json = self.read_exact(json_len, "message")?;
        let blob_len = self.read_len("blob header")? as usize;
        if blob_len > MAX_BLOB {
            return Err(ProtocolError(format!(
                "protocol error: a {blob_len}-byte blob is over the {MAX_BLOB}-byte limit"
            ))
            .into());
        }
        let blob = self.read_exact(blob_len, "blob")?;
        let msg: Msg = serde_json::from_slice(&json).map_err(|e| {
            anyhow::Error::from(e).context(ProtocolError(
                "protocol error: a message does not parse".into(),
            ))
        })?;
        if let Msg::Error { message } = msg {
            return Err(PeerError(message).into());
        }
        Ok((msg, blob))
    }

    fn read_len(&mut self, what: &str) -> Result<u32> {
        let b = self.read_exact(4, what)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn read_exact(&mut self, n: usize, what: &str) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; n];
        self.r.read_exact(&mut buf).map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => {
                anyhow::anyhow!("the connection closed in the middle of a {what}")
            }
            // A deadline: said as it is ("sent nothing for 60 s").
            io::ErrorKind::TimedOut => anyhow::Error::from(e),
            _ => anyhow::Error::from(e).context(format!("reading a {what}")),
        })?;
        self.received += n as u64;
        Ok(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_limits_hold() {
        let mut buf = Vec::new();
        let mut w = Wire::new(io::empty(), &mut buf);
        w.say(
            &Msg::Get {
                path: "modules/a/f".into(),
            },
            b"xyz",
        )
        .unwrap();
        let sent = w.sent;
        let mut r = Wire::new(&buf[..], io::sink());
        let (msg, blob) = r.recv().unwrap();
        assert_eq!(
            msg,
            Msg::Get {
                path: "modules/a/f".into()
            }
        );
        assert_eq!(blob, b"xyz");
        assert_eq!(r.received, sent);

        let huge = (u32::MAX).to_be_bytes();
        let err = Wire::new(&huge[..], io::sink()).recv().unwrap_err();
        assert!(err.to_string().contains("over the"), "{err}");

        let truncated = &buf[..buf.len() - 2];
        let err = Wire::new(truncated, io::sink()).recv().unwrap_err();
        assert!(err.to_string().contains("connection closed"), "{err}");
    }
}
