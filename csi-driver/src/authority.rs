//! A fix-up for gRPC clients that send a Unix socket *path* as the HTTP/2 `:authority`.
//!
//! The kubelet's plugin watcher dials registration sockets by path without overriding the
//! authority, so its requests carry e.g. `:authority: /var/lib/kubelet/plugins_registry/
//! csi.ringfs.io-reg.sock`. That is not a valid authority (RFC 3986), and the HTTP/2
//! server under tonic resets such streams with PROTOCOL_ERROR. Between the socket and the
//! server, this pump re-encodes each request's header block with `:authority: localhost`
//! (what gRPC itself uses for Unix sockets) and passes every other frame through as is.
//! Only the client-to-server direction needs it.

use std::io;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// The smallest SETTINGS_MAX_FRAME_SIZE a peer may announce; re-encoded blocks are split
/// at it.
const MAX_FRAME: usize = 16_384;
/// Header blocks larger than this are refused (a registration request is ~100 bytes).
const MAX_BLOCK: usize = 1 << 20;

fn bad(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_string())
}

async fn write_frame<W: AsyncWrite + Unpin>(
    to: &mut W,
    typ: u8,
    flags: u8,
    stream: u32,
    payload: &[u8],
) -> io::Result<()> {
    let len = payload.len() as u32;
    let mut h = [0u8; 9];
    h[..3].copy_from_slice(&len.to_be_bytes()[1..]);
    h[3] = typ;
    h[4] = flags;
    h[5..].copy_from_slice(&stream.to_be_bytes());
    to.write_all(&h).await?;
    to.write_all(payload).await
}

/// True for what is safe to pass on as an authority: a host name or address with an
/// optional port. Paths (raw or percent-encoded, as grpc-go sends them) are not.
fn plain_host(v: &[u8]) -> bool {
    !v.is_empty()
        && v.iter()
            .all(|b| b.is_ascii_alphanumeric() || b".-_:[]".contains(b))
}

struct Rewriter<'a> {
    decoder: hpack::Decoder<'a>,
    encoder: hpack::Encoder<'a>,
}

impl Rewriter<'_> {
    fn rewrite(&mut self, block: &[u8]) -> io::Result<Vec<u8>> {
        let headers = self
            .decoder
            .decode(block)
            .map_err(|e| bad(&format!("undecodable header block: {e:?}")))?;
        let fixed: Vec<(Vec<u8>, Vec<u8>)> = headers
            .into_iter()
            .map(|(k, v)| {
                if k == b":authority" && !plain_host(&v) {
                    tracing::debug!(authority = %String::from_utf8_lossy(&v), "authority rewritten to localhost");
                    (k, b"localhost".to_vec())
                } else {
                    tracing::trace!(header = %String::from_utf8_lossy(&k), value = %String::from_utf8_lossy(&v), "request header");
                    (k, v)
                }
            })
            .collect();
        Ok(self
            .encoder
            .encode(fixed.iter().map(|(k, v)| (k.as_slice(), v.as_slice()))))
    }
}

/// Copies an HTTP/2 client stream from `from` to `to`, rewriting path authorities.
/// Returns when `from` ends (after shutting `to` down) or on a protocol error.
pub async fn pump<R, W>(mut from: R, mut to: W) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut preface = [0u8; 24];
    from.read_exact(&mut preface).await?;
    if &preface != PREFACE {
        return Err(bad("not an HTTP/2 connection preface"));
    }
    to.write_all(&preface).await?;
    let mut rw = Rewriter {
        decoder: hpack::Decoder::new(),
        encoder: hpack::Encoder::new(),
    };
    // A header block still waiting for its CONTINUATION frames: (stream, END_STREAM, bytes).
    let mut pending: Option<(u32, u8, Vec<u8>)> = None;
    loop {
        let mut h = [0u8; 9];
        match from.read_exact(&mut h).await {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                let _ = to.shutdown().await;
                return Ok(());
            }
            Err(e) => return Err(e),
        }
        let len = u32::from_be_bytes([0, h[0], h[1], h[2]]) as usize;
        let (typ, flags) = (h[3], h[4]);
        let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
        let mut payload = vec![0u8; len];
        from.read_exact(&mut payload).await?;
        let block_done = match (typ, pending.as_mut()) {
            (HEADERS, None) => {
                let mut p = payload.as_slice();
                let mut pad = 0usize;
                if flags & PADDED != 0 {
                    let (&n, rest) = p.split_first().ok_or_else(|| bad("short HEADERS"))?;
                    pad = usize::from(n);
                    p = rest;
                }
                if flags & PRIORITY != 0 {
                    p = p.get(5..).ok_or_else(|| bad("short HEADERS"))?;
                }
                let frag = p
                    .get(..p.len().saturating_sub(pad))
                    .filter(|_| pad <= p.len())
                    .ok_or_else(|| bad("HEADERS padding exceeds the frame"))?;
                pending = Some((stream, flags & END_STREAM, frag.to_vec()));
                flags & END_HEADERS != 0
            }
            (CONTINUATION, Some((s, _, block))) if *s == stream => {
                block.extend_from_slice(&payload);
                if block.len() > MAX_BLOCK {
                    return Err(bad("header block too large"));
                }
                flags & END_HEADERS != 0
            }
            (HEADERS | CONTINUATION, _) | (_, Some(_)) => {
                return Err(bad("interleaved or unexpected header frames"))
            }
            _ => {
                to.write_all(&h).await?;
                to.write_all(&payload).await?;
                continue;
            }
        };
        if !block_done {
            continue;
        }
        let Some((stream, end_stream, block)) = pending.take() else {
            continue;
        };
        let encoded = rw.rewrite(&block)?;
        let mut chunks = encoded.chunks(MAX_FRAME).peekable();
        let mut first = true;
        if chunks.peek().is_none() {
            write_frame(&mut to, HEADERS, end_stream | END_HEADERS, stream, &[]).await?;
        }
        while let Some(c) = chunks.next() {
            let last = chunks.peek().is_none();
            let (typ, mut f) = if first {
                (HEADERS, end_stream)
            } else {
                (CONTINUATION, 0)
            };
            if last {
                f |= END_HEADERS;
            }
            write_frame(&mut to, typ, f, stream, c).await?;
            first = false;
        }
        to.flush().await?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(typ: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut v = (payload.len() as u32).to_be_bytes()[1..].to_vec();
        v.extend([typ, flags]);
        v.extend(stream.to_be_bytes());
        v.extend(payload);
        v
    }

    /// Parses frames out of `buf` after the preface: (type, flags, stream, payload).
    fn frames(buf: &[u8]) -> Vec<(u8, u8, u32, Vec<u8>)> {
        let mut out = Vec::new();
        let mut p = &buf[24..];
        while p.len() >= 9 {
            let len = u32::from_be_bytes([0, p[0], p[1], p[2]]) as usize;
            let stream = u32::from_be_bytes([p[5], p[6], p[7], p[8]]);
            out.push((p[3], p[4], stream, p[9..9 + len].to_vec()));
            p = &p[9 + len..];
        }
        out
    }

    async fn run(input: Vec<u8>) -> io::Result<Vec<u8>> {
        let (mut client, server_in) = tokio::io::duplex(1 << 20);
        let (server_out, mut read_back) = tokio::io::duplex(1 << 20);
        let task = tokio::spawn(pump(server_in, server_out));
        client.write_all(&input).await?;
        drop(client);
        let res = task.await.map_err(io::Error::other)?;
        let mut out = Vec::new();
        read_back.read_to_end(&mut out).await?;
        res.map(|_| out)
    }

    #[tokio::test]
    async fn a_path_authority_becomes_localhost_and_other_frames_pass() {
        let mut enc = hpack::Encoder::new();
        let headers: Vec<(&[u8], &[u8])> = vec![
            (b":method", b"POST"),
            (b":scheme", b"http"),
            (b":path", b"/pluginregistration.Registration/GetInfo"),
            (
                b":authority",
                b"%2Fvar%2Flib%2Fkubelet%2Fplugins_registry%2Fx-reg.sock",
            ),
            (b"content-type", b"application/grpc"),
        ];
        let block = enc.encode(headers.clone());
        let (a, b) = block.split_at(block.len() / 2);
        let mut input = PREFACE.to_vec();
        input.extend(frame(0x4, 0, 0, &[])); // SETTINGS
                                             // HEADERS (padded, with priority) + CONTINUATION.
        let mut h = vec![3u8];
        h.extend([0, 0, 0, 0, 16]);
        h.extend(a);
        h.extend([0, 0, 0]);
        input.extend(frame(HEADERS, PADDED | PRIORITY, 1, &h));
        input.extend(frame(CONTINUATION, END_HEADERS, 1, b));
        input.extend(frame(0x0, END_STREAM, 1, b"\0\0\0\0\0")); // DATA
                                                                // A second request reuses the dynamic table.
        input.extend(frame(HEADERS, END_HEADERS, 3, &enc.encode(headers)));
        let out = run(input).await.expect("pump");
        assert_eq!(&out[..24], PREFACE);
        let fs = frames(&out);
        assert_eq!(fs.len(), 4, "{fs:?}");
        assert_eq!((fs[0].0, fs[0].3.len()), (0x4, 0));
        let mut dec = hpack::Decoder::new();
        for (i, stream) in [(1, 1), (3, 3)] {
            assert_eq!(fs[i].0, HEADERS);
            assert_eq!(fs[i].1, END_HEADERS);
            assert_eq!(fs[i].2, stream);
            let got = dec.decode(&fs[i].3).expect("decodes");
            let auth = got
                .iter()
                .find(|(k, _)| k == b":authority")
                .expect("authority");
            assert_eq!(auth.1, b"localhost");
            let path = got.iter().find(|(k, _)| k == b":path").expect("path");
            assert_eq!(path.1, b"/pluginregistration.Registration/GetInfo");
        }
        assert_eq!(
            (fs[2].0, fs[2].1, fs[2].3.as_slice()),
            (0x0, END_STREAM, &b"\0\0\0\0\0"[..])
        );
    }

    #[test]
    fn only_host_authorities_are_kept() {
        for ok in ["localhost", "example.com:443", "[::1]:50051", "10.0.0.1"] {
            assert!(plain_host(ok.as_bytes()), "{ok}");
        }
        for bad in ["", "/var/lib/x.sock", "%2Fvar%2Fx.sock", "a b"] {
            assert!(!plain_host(bad.as_bytes()), "{bad}");
        }
    }

    #[tokio::test]
    async fn garbage_is_refused_without_panicking() {
        assert!(run(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec())
            .await
            .is_err());
        let mut input = PREFACE.to_vec();
        input.extend(frame(HEADERS, PADDED | END_HEADERS, 1, &[200, 1, 2]));
        assert!(run(input).await.is_err());
        let mut input = PREFACE.to_vec();
        input.extend(frame(CONTINUATION, END_HEADERS, 1, &[1]));
        assert!(run(input).await.is_err());
        let mut input = PREFACE.to_vec();
        input.extend(frame(HEADERS, END_HEADERS, 1, &[0xff, 0xff, 0xff]));
        assert!(run(input).await.is_err());
    }
}
