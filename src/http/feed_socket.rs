//! A feed's websocket connection, split in two. tungstenite reads what the client sends (pings,
//! the close, anything malformed) and answers the way the protocol says; the feed writes its
//! frames itself: the frame header and the frame's shared text in one vectored write, so no
//! byte of a frame is copied in user space. tungstenite would copy every frame into its write
//! buffer first (`Frame::format_into_buf`): 18% of the service's samples with 1,000 feeds.
//!
//! tungstenite's own writes (pongs, the reply to a client's close) go to `Replies`, which keeps
//! them until the writer puts them on the socket between two of its writes, so the two never
//! interleave inside a frame.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf, ReadHalf, WriteHalf};
use tokio::sync::Notify;

/// The websocket opcode of a text frame, with the FIN bit.
const TEXT: u8 = 0x81;
/// The websocket opcode of a close frame, with the FIN bit.
const CLOSE: u8 = 0x88;
/// Most bytes of a close frame's reason: a control frame carries at most 125 bytes, two of
/// them the code.
const MAX_CLOSE_REASON: usize = 123;

/// What tungstenite wrote (whole frames: it writes each frame it has buffered in full, and this
/// side always takes all), waiting for the writer.
#[derive(Default)]
pub(super) struct Pending {
    bytes: Mutex<Vec<u8>>,
    /// Told each time bytes are added.
    added: Notify,
}

impl Pending {
    fn take(&self) -> Vec<u8> {
        std::mem::take(
            &mut *self
                .bytes
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }
}

/// The side of the connection tungstenite gets: reads come from the client, writes are kept
/// in `Pending` for the writer.
pub(super) struct Replies<S> {
    read: ReadHalf<S>,
    pending: Arc<Pending>,
}

impl<S: AsyncRead + AsyncWrite> AsyncRead for Replies<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.read).poll_read(cx, buf)
    }
}

impl<S> AsyncWrite for Replies<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.pending
            .bytes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extend_from_slice(buf);
        self.pending.added.notify_one();
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// The writing side of a feed's connection.
pub(super) struct FeedWriter<S> {
    write: WriteHalf<S>,
    pending: Arc<Pending>,
    /// Frames not yet written in full, the first maybe in part. Kept here, not in the future
    /// that writes them, so that a write cut short (a close order wins over a full socket)
    /// leaves the rest of its frame to finish before the close frame: the client must never
    /// see half a frame.
    queue: VecDeque<Outgoing>,
}

/// One frame to write: its header and its payload (shared).
struct Outgoing {
    head: [u8; 10],
    head_len: usize,
    body: Bytes,
    /// Bytes of head and body written so far.
    written: usize,
}

impl Outgoing {
    fn frame(first: u8, body: Bytes) -> Outgoing {
        let (head, head_len) = header(first, body.len());
        Outgoing {
            head,
            head_len,
            body,
            written: 0,
        }
    }

    /// Bytes tungstenite wrote: whole frames already.
    fn raw(body: Vec<u8>) -> Outgoing {
        Outgoing {
            head: [0; 10],
            head_len: 0,
            body: body.into(),
            written: 0,
        }
    }

    fn len(&self) -> usize {
        self.head_len + self.body.len()
    }

    /// What is left to write, as at most two slices.
    fn rest(&self) -> [&[u8]; 2] {
        if self.written < self.head_len {
            [&self.head[self.written..self.head_len], &self.body]
        } else {
            [&[], &self.body[self.written - self.head_len..]]
        }
    }
}

/// Most frames gathered into one vectored write (the system allows 1,024 slices).
const MAX_SLICES: usize = 512;

/// Splits `io` into the side tungstenite reads (and answers) on and the feed's writer.
pub(super) fn split<S: AsyncRead + AsyncWrite>(io: S) -> (Replies<S>, FeedWriter<S>) {
    let (read, write) = tokio::io::split(io);
    let pending = Arc::new(Pending::default());
    let replies = Replies {
        read,
        pending: pending.clone(),
    };
    let writer = FeedWriter {
        write,
        pending,
        queue: VecDeque::new(),
    };
    (replies, writer)
}

/// The header of an unmasked frame with `len` bytes of payload, and how long it is.
fn header(first: u8, len: usize) -> ([u8; 10], usize) {
    let mut out = [0u8; 10];
    out[0] = first;
    match len {
        0..=125 => {
            out[1] = len as u8;
            (out, 2)
        }
        126..=0xffff => {
            out[1] = 126;
            out[2..4].copy_from_slice(&(len as u16).to_be_bytes());
            (out, 4)
        }
        _ => {
            out[1] = 127;
            out[2..10].copy_from_slice(&(len as u64).to_be_bytes());
            (out, 10)
        }
    }
}

impl<S: AsyncWrite> FeedWriter<S> {
    /// Resolves when tungstenite has written something (a pong, a close reply) to send. Holds
    /// no borrow of the writer, which stays free to write meanwhile.
    pub(super) fn replies(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let pending = self.pending.clone();
        async move { pending.added.notified().await }
    }

    /// Queues what tungstenite has written, if anything, after the frames queued before.
    fn queue_replies(&mut self) {
        let replies = self.pending.take();
        if !replies.is_empty() {
            self.queue.push_back(Outgoing::raw(replies));
        }
    }

    /// Sends what tungstenite has written, if anything.
    pub(super) async fn send_replies(&mut self) -> std::io::Result<()> {
        self.queue_replies();
        self.drain().await
    }

    /// Writes one text frame per text (tungstenite's replies first), each frame's header and
    /// shared text together in vectored writes, then flushes.
    pub(super) async fn text_frames(
        &mut self,
        texts: impl Iterator<Item = Bytes>,
    ) -> std::io::Result<()> {
        self.queue_replies();
        self.queue
            .extend(texts.map(|text| Outgoing::frame(TEXT, text)));
        self.drain().await
    }

    /// Writes the queue, then flushes. Safe to cancel: what was written is off the queue.
    async fn drain(&mut self) -> std::io::Result<()> {
        let FeedWriter { write, queue, .. } = self;
        while !queue.is_empty() {
            let slices: Vec<IoSlice<'_>> = queue
                .iter()
                .take(MAX_SLICES / 2)
                .flat_map(|o| o.rest())
                .filter(|s| !s.is_empty())
                .map(IoSlice::new)
                .collect();
            let mut n = write.write_vectored(&slices).await?;
            drop(slices);
            if n == 0 {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            while n > 0 {
                let Some(front) = queue.front_mut() else {
                    break;
                };
                let left = front.len() - front.written;
                if n >= left {
                    n -= left;
                    queue.pop_front();
                } else {
                    front.written += n;
                    n = 0;
                }
            }
        }
        write.flush().await
    }

    /// Sends a close frame with `code` and `reason` (cut to what a control frame holds) and
    /// shuts the connection down for writing. Of the frames still queued only the rest of one
    /// already begun goes first.
    pub(super) async fn close(&mut self, code: u16, reason: &str) -> std::io::Result<()> {
        let begun = self.queue.front().is_some_and(|o| o.written > 0);
        self.queue.truncate(usize::from(begun));
        let mut cut = reason.len().min(MAX_CLOSE_REASON);
        while !reason.is_char_boundary(cut) {
            cut -= 1;
        }
        let mut body = Vec::with_capacity(2 + cut);
        body.extend_from_slice(&code.to_be_bytes());
        body.extend_from_slice(&reason.as_bytes()[..cut]);
        self.queue.push_back(Outgoing::frame(CLOSE, body.into()));
        self.drain().await?;
        self.write.shutdown().await
    }

    /// Sends tungstenite's replies (the answer to a client's close) and shuts the connection
    /// down for writing.
    pub(super) async fn finish(&mut self) -> std::io::Result<()> {
        self.send_replies().await?;
        self.write.shutdown().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
    use tokio_tungstenite::tungstenite::protocol::Role;
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::WebSocketStream;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    }

    #[test]
    fn frames_of_every_length_class_read_back_as_a_client_sees_them() {
        runtime().block_on(async {
            let (client, server) = tokio::io::duplex(1 << 16);
            let (_replies, mut writer) = split(server);
            let texts: Vec<String> = [0, 1, 125, 126, 65_535, 65_536, 300_000]
                .iter()
                .map(|&n| "é".repeat(n / 2) + &"x".repeat(n % 2))
                .collect();
            let writing = tokio::spawn(async move {
                let bytes = texts.iter().map(|t| Bytes::from(t.clone()));
                writer.text_frames(bytes).await.expect("write");
                writer.close(4000, &"é".repeat(100)).await.expect("close");
                texts
            });
            let mut socket = WebSocketStream::from_raw_socket(client, Role::Client, None).await;
            let mut got = Vec::new();
            let close = loop {
                match socket.next().await {
                    Some(Ok(Message::Text(text))) => got.push(text.to_string()),
                    Some(Ok(Message::Close(close))) => break close,
                    other => panic!("unexpected {other:?}"),
                }
            };
            assert_eq!(got, writing.await.expect("writer"));
            let close = close.expect("a close frame");
            assert_eq!(close.code, CloseCode::from(4000));
            // Cut at a character boundary to fit a control frame.
            assert_eq!(close.reason.as_str(), "é".repeat(61));
        });
    }

    #[test]
    fn a_close_after_a_write_cut_short_finishes_the_frame_begun_first() {
        runtime().block_on(async {
            // A socket that takes 1 KiB until the client reads.
            let (client, server) = tokio::io::duplex(1024);
            let (_replies, mut writer) = split(server);
            let first = "a".repeat(100_000);
            let second = "b".repeat(100_000);
            let frames = [first.clone(), second].map(Bytes::from);
            let write = writer.text_frames(frames.into_iter());
            let cut = tokio::time::timeout(std::time::Duration::from_millis(50), write).await;
            assert!(cut.is_err(), "the write should have waited for the client");
            let closing = tokio::spawn(async move { writer.close(1008, "stalled").await });
            let mut socket = WebSocketStream::from_raw_socket(client, Role::Client, None).await;
            let text = socket.next().await;
            assert!(
                matches!(&text, Some(Ok(Message::Text(t))) if *t == first),
                "the frame begun is finished"
            );
            match socket.next().await {
                Some(Ok(Message::Close(Some(close)))) => {
                    assert_eq!(close.code, CloseCode::Policy);
                    assert_eq!(close.reason.as_str(), "stalled");
                }
                other => panic!("expected the close, not {other:?}"),
            }
            closing.await.expect("task").expect("close");
        });
    }

    #[test]
    fn a_clients_ping_and_close_are_answered_through_the_writer() {
        runtime().block_on(async {
            let (client, server) = tokio::io::duplex(1 << 16);
            let (replies, mut writer) = split(server);
            let mut server = WebSocketStream::from_raw_socket(replies, Role::Server, None).await;
            let mut client = WebSocketStream::from_raw_socket(client, Role::Client, None).await;
            client
                .send(Message::Ping(b"are you there".to_vec().into()))
                .await
                .expect("ping");
            client.send(Message::Close(None)).await.expect("close");
            // The server reads the ping (the pong is queued) and the close, and flushes the reply.
            assert!(matches!(server.next().await, Some(Ok(Message::Ping(_)))));
            assert!(matches!(server.next().await, Some(Ok(Message::Close(_)))));
            let _ = server.flush().await;
            writer.finish().await.expect("finish");
            let pong = client.next().await;
            assert!(
                matches!(&pong, Some(Ok(Message::Pong(p))) if &p[..] == b"are you there"),
                "{pong:?}"
            );
            assert!(matches!(client.next().await, Some(Ok(Message::Close(_)))));
        });
    }
}
