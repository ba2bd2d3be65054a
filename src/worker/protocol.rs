//! The frames exchanged by the supervisor and its worker processes over the worker's stdin and
//! stdout. This module is the only place that knows the pipe format.
//!
//! A frame is a `u32` big-endian body length followed by a MessagePack body written with field
//! names ([`rmp_serde::to_vec_named`] layout). Invariants:
//! - a body is never longer than [`MAX_FRAME_BYTES`]: [`write_frame`] refuses to send such a frame
//!   and [`read_frame`] refuses it from the length alone, before allocating anything;
//! - [`write_frame`] hands the whole frame to the writer in one `write_all`, so frames from one
//!   writer never interleave; it does not flush (the caller does);
//! - [`read_frame`] returns `Ok(None)` only for an end of input exactly at a frame boundary; any
//!   other malformed input is an error, and no input makes it panic.

use std::io::{self, ErrorKind, Read, Write};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

#[cfg(test)]
use crate::model::Outcome;
use crate::model::RunResult;

/// Largest accepted frame body, in bytes.
pub const MAX_FRAME_BYTES: usize = 4 * 1024 * 1024;

/// Bytes in the length prefix of a frame.
const HEADER_BYTES: usize = 4;

/// A frame could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("frame i/o failed: {0}")]
    Io(#[from] io::Error),
    #[error("input ended inside a frame {part}: got {got} of {expected} bytes")]
    Truncated {
        /// `"length"` or `"body"`.
        part: &'static str,
        expected: usize,
        got: usize,
    },
    #[error("frame body of {len} bytes exceeds the limit of {cap} bytes")]
    TooLarge { len: usize, cap: usize },
    #[error("could not encode a frame: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
    #[error("could not decode a frame: {0}")]
    Decode(#[from] rmp_serde::decode::Error),
    #[error("frame body has {extra} bytes after the message")]
    TrailingBytes { extra: usize },
}

/// A message from the supervisor to a worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ToWorker {
    /// Run one run of a job; the worker answers `Started`, then `Finished`.
    Run(RunJob),
    /// Exit once idle (a job already running is finished first).
    Shutdown,
}

/// One run to run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunJob {
    pub job_id: String,
    pub command: String,
    pub timeout_ms: Option<u64>,
    /// Directory to run in; `None`: the worker's own.
    #[serde(default)]
    pub cwd: Option<String>,
    /// Variables added to the worker's environment.
    #[serde(default)]
    pub env: Vec<(String, String)>,
    /// Files the output is copied to as it arrives (stdout, stderr), for `logs --follow`.
    #[serde(default)]
    pub live: Option<(String, String)>,
}

/// A message from a worker to the supervisor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum FromWorker {
    /// Sent once, first, when the worker is ready for jobs.
    Ready { pid: u32 },
    /// The job's shell is running, in its own process group `pgid`.
    Started { job_id: String, pgid: i32 },
    /// The run ended.
    Finished { job_id: String, result: RunResult },
}

/// Writes `msg` as one frame with a single `write_all`. Does not flush.
pub fn write_frame<W, T>(w: &mut W, msg: &T) -> Result<(), ProtocolError>
where
    W: Write + ?Sized,
    T: Serialize + ?Sized,
{
    let mut frame = Vec::with_capacity(128);
    frame.extend_from_slice(&[0; HEADER_BYTES]);
    rmp_serde::encode::write_named(&mut frame, msg)?;
    let len = frame.len() - HEADER_BYTES;
    let too_large = ProtocolError::TooLarge {
        len,
        cap: MAX_FRAME_BYTES,
    };
    if len > MAX_FRAME_BYTES {
        return Err(too_large);
    }
    let prefix = u32::try_from(len).map_err(|_| too_large)?;
    frame[..HEADER_BYTES].copy_from_slice(&prefix.to_be_bytes());
    w.write_all(&frame)?;
    Ok(())
}

/// Reads one frame. `Ok(None)`: the input ended cleanly, at a frame boundary.
pub fn read_frame<R, T>(r: &mut R) -> Result<Option<T>, ProtocolError>
where
    R: Read + ?Sized,
    T: DeserializeOwned,
{
    let mut header = [0u8; HEADER_BYTES];
    match read_full(r, &mut header)? {
        0 => return Ok(None),
        HEADER_BYTES => {}
        got => {
            return Err(ProtocolError::Truncated {
                part: "length",
                expected: HEADER_BYTES,
                got,
            })
        }
    }
    let len = usize::try_from(u32::from_be_bytes(header)).unwrap_or(usize::MAX);
    if len > MAX_FRAME_BYTES {
        return Err(ProtocolError::TooLarge {
            len,
            cap: MAX_FRAME_BYTES,
        });
    }
    let mut body = vec![0u8; len];
    let got = read_full(r, &mut body)?;
    if got < len {
        return Err(ProtocolError::Truncated {
            part: "body",
            expected: len,
            got,
        });
    }
    // Decoding from a reader (not a borrowed slice) copies strings, but lengths claimed inside the
    // body can then never make the decoder allocate more than the body holds.
    let mut rest: &[u8] = &body;
    let msg = rmp_serde::from_read(&mut rest)?;
    if !rest.is_empty() {
        return Err(ProtocolError::TrailingBytes { extra: rest.len() });
    }
    Ok(Some(msg))
}

/// Fills `buf` unless the input ends first; returns how many bytes were read.
fn read_full<R: Read + ?Sized>(r: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result() -> RunResult {
        RunResult {
            outcome: Outcome::TimedOut { after_ms: 300 },
            duration_ms: 301,
            stdout: b"out\n\x00\xff".to_vec(),
            stderr: Vec::new(),
        }
    }

    fn finished() -> FromWorker {
        FromWorker::Finished {
            job_id: "job-1".into(),
            result: result(),
        }
    }

    fn round_trip<T>(msg: T)
    where
        T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug,
    {
        let mut buf = Vec::new();
        write_frame(&mut buf, &msg).unwrap();
        let len = u32::from_be_bytes(buf[..4].try_into().unwrap()) as usize;
        assert_eq!(len, buf.len() - 4, "length prefix counts the body");
        let mut rd = &buf[..];
        assert_eq!(read_frame::<_, T>(&mut rd).unwrap(), Some(msg));
        assert!(rd.is_empty());
        assert!(read_frame::<_, T>(&mut rd).unwrap().is_none());
    }

    #[test]
    fn every_message_round_trips() {
        round_trip(ToWorker::Shutdown);
        round_trip(ToWorker::Run(RunJob {
            job_id: "a".into(),
            command: "echo 'hi' | tr a-z A-Z".into(),
            timeout_ms: Some(1500),
            cwd: Some("/tmp".into()),
            env: vec![("A".into(), "1".into())],
            live: Some(("/tmp/o".into(), "/tmp/e".into())),
        }));
        round_trip(ToWorker::Run(RunJob {
            job_id: String::new(),
            command: "true".into(),
            timeout_ms: None,
            cwd: None,
            env: Vec::new(),
            live: None,
        }));
        round_trip(FromWorker::Ready { pid: 4242 });
        round_trip(FromWorker::Started {
            job_id: "a".into(),
            pgid: 77,
        });
        round_trip(finished());
        for outcome in [
            Outcome::Exited(-1),
            Outcome::Signaled(9),
            Outcome::SpawnFailed("no sh".into()),
            Outcome::WorkerLost,
            Outcome::Interrupted,
        ] {
            round_trip(FromWorker::Finished {
                job_id: "j".into(),
                result: RunResult {
                    outcome,
                    ..result()
                },
            });
        }
    }

    #[test]
    fn tails_are_encoded_as_binary() {
        let mut buf = Vec::new();
        write_frame(&mut buf, &finished()).unwrap();
        // bin8 marker, length 6, then the raw bytes.
        let needle = [0xc4, 6, b'o', b'u', b't', b'\n', 0, 0xff];
        assert!(buf.windows(needle.len()).any(|w| w == needle));
    }

    #[test]
    fn several_frames_in_one_buffer() {
        let msgs = vec![
            FromWorker::Ready { pid: 1 },
            FromWorker::Started {
                job_id: "x".into(),
                pgid: 2,
            },
            finished(),
        ];
        let mut buf = Vec::new();
        for m in &msgs {
            write_frame(&mut buf, m).unwrap();
        }
        let mut rd = &buf[..];
        let mut got = Vec::new();
        while let Some(m) = read_frame::<_, FromWorker>(&mut rd).unwrap() {
            got.push(m);
        }
        assert_eq!(got, msgs);
    }

    /// A reader that hands out one byte per call, like a slow pipe.
    struct Trickle<'a>(&'a [u8]);

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            match (self.0.split_first(), buf.first_mut()) {
                (Some((b, rest)), Some(slot)) => {
                    *slot = *b;
                    self.0 = rest;
                    Ok(1)
                }
                _ => Ok(0),
            }
        }
    }

    #[test]
    fn short_reads_are_completed() {
        let mut buf = Vec::new();
        write_frame(&mut buf, &ToWorker::Shutdown).unwrap();
        write_frame(&mut buf, &FromWorker::Ready { pid: 9 }).unwrap();
        let mut rd = Trickle(&buf);
        assert_eq!(
            read_frame::<_, ToWorker>(&mut rd).unwrap(),
            Some(ToWorker::Shutdown)
        );
        assert_eq!(
            read_frame::<_, FromWorker>(&mut rd).unwrap(),
            Some(FromWorker::Ready { pid: 9 })
        );
        assert!(read_frame::<_, FromWorker>(&mut rd).unwrap().is_none());
    }

    #[test]
    fn oversized_frame_is_refused_when_writing() {
        let msg = FromWorker::Finished {
            job_id: "j".into(),
            result: RunResult {
                stdout: vec![b'x'; MAX_FRAME_BYTES],
                ..result()
            },
        };
        let mut buf = Vec::new();
        let err = write_frame(&mut buf, &msg).unwrap_err();
        match err {
            ProtocolError::TooLarge { len, cap } => {
                assert!(len > MAX_FRAME_BYTES);
                assert_eq!(cap, MAX_FRAME_BYTES);
            }
            other => panic!("expected TooLarge, got {other:?}"),
        }
        assert!(buf.is_empty(), "nothing written");
    }

    #[test]
    fn oversized_frame_is_refused_when_reading() {
        for len in [MAX_FRAME_BYTES as u32 + 1, u32::MAX] {
            let mut buf = len.to_be_bytes().to_vec();
            buf.extend_from_slice(b"whatever");
            let err = read_frame::<_, ToWorker>(&mut &buf[..]).unwrap_err();
            assert!(
                matches!(err, ProtocolError::TooLarge { len: l, cap: MAX_FRAME_BYTES } if l == len as usize),
                "{err:?}"
            );
        }
    }

    #[test]
    fn frame_at_the_cap_is_accepted() {
        // A bin32 value (5 bytes of header) filling the cap exactly.
        let payload = serde_bytes::ByteBuf::from(vec![7u8; MAX_FRAME_BYTES - 5]);
        let mut buf = Vec::new();
        write_frame(&mut buf, &payload).unwrap();
        assert_eq!(buf.len(), 4 + MAX_FRAME_BYTES);
        let back: serde_bytes::ByteBuf = read_frame(&mut &buf[..]).unwrap().unwrap();
        assert_eq!(back, payload);
    }

    #[test]
    fn truncated_header() {
        for cut in 1..4 {
            let buf = [0u8, 0, 0, 1];
            let err = read_frame::<_, ToWorker>(&mut &buf[..cut]).unwrap_err();
            assert!(
                matches!(err, ProtocolError::Truncated { part: "length", expected: 4, got } if got == cut),
                "{err:?}"
            );
        }
    }

    #[test]
    fn truncated_body() {
        let mut buf = Vec::new();
        write_frame(&mut buf, &finished()).unwrap();
        let body = buf.len() - 4;
        for cut in [4, 5, buf.len() - 1] {
            let err = read_frame::<_, FromWorker>(&mut &buf[..cut]).unwrap_err();
            assert!(
                matches!(err, ProtocolError::Truncated { part: "body", expected, got } if expected == body && got == cut - 4),
                "{err:?}"
            );
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let bodies: [&[u8]; 6] = [
            b"",
            b"\xc1",                 // never-used marker
            b"\x81\xa3Run\xc0",      // Run with nil instead of a job
            b"\xa4Nope",             // unknown variant
            b"\xc6\xff\xff\xff\xff", // bin32 claiming 4 GiB
            b"\xdb\x7f\xff\xff\xff", // str32 claiming 2 GiB
        ];
        for body in bodies {
            let mut buf = (body.len() as u32).to_be_bytes().to_vec();
            buf.extend_from_slice(body);
            let err = read_frame::<_, ToWorker>(&mut &buf[..]).unwrap_err();
            assert!(matches!(err, ProtocolError::Decode(_)), "{body:?}: {err:?}");
        }
        // A valid message followed by junk inside the same frame.
        let mut body = rmp_serde::to_vec_named(&ToWorker::Shutdown).unwrap();
        body.extend_from_slice(b"junk");
        let mut buf = (body.len() as u32).to_be_bytes().to_vec();
        buf.extend_from_slice(&body);
        let err = read_frame::<_, ToWorker>(&mut &buf[..]).unwrap_err();
        assert!(
            matches!(err, ProtocolError::TrailingBytes { extra: 4 }),
            "{err:?}"
        );
        // Random bytes never panic, whatever they decode to.
        let mut seed: u32 = 0x9e37_79b9;
        for _ in 0..2000 {
            let mut buf = Vec::new();
            for _ in 0..24 {
                seed ^= seed << 13;
                seed ^= seed >> 17;
                seed ^= seed << 5;
                buf.push(seed as u8);
            }
            buf[..4].copy_from_slice(&20u32.to_be_bytes());
            let _ = read_frame::<_, FromWorker>(&mut &buf[..]);
        }
    }

    #[test]
    fn errors_read_as_one_lower_case_line() {
        let errs = [
            ProtocolError::TooLarge { len: 9, cap: 8 },
            ProtocolError::Truncated {
                part: "body",
                expected: 10,
                got: 3,
            },
            ProtocolError::TrailingBytes { extra: 2 },
        ];
        for e in errs {
            let s = e.to_string();
            assert!(s.starts_with(|c: char| c.is_lowercase()), "{s}");
            assert!(!s.ends_with('.') && !s.contains('\n'), "{s}");
        }
    }

    /// Hex of `bytes`, two lower-case digits a byte.
    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The exact bytes of each frame, pinned: the pipe format changes only on purpose (the
    /// supervisor and its workers are one binary, but a change must still be deliberate).
    #[test]
    fn golden_frames() {
        let frame = |msg: &dyn erased::Frame| hex(&msg.frame());
        let cases: [(&dyn erased::Frame, &str); 5] = [
            (&ToWorker::Shutdown, "00000009a853687574646f776e"),
            (
                &ToWorker::Run(RunJob {
                    job_id: "j1".into(),
                    command: "echo hi".into(),
                    timeout_ms: Some(1500),
                    cwd: Some("/tmp".into()),
                    env: vec![("A".into(), "1".into())],
                    live: None,
                }),
                concat!(
                    "0000004781a352756e86a66a6f625f6964a26a31a7636f6d6d616e64a7656368",
                    "6f206869aa74696d656f75745f6d73cd05dca3637764a42f746d70a3656e7691",
                    "92a141a131a46c697665c0",
                ),
            ),
            (
                &FromWorker::Ready { pid: 4242 },
                "0000000f81a5526561647981a3706964cd1092",
            ),
            (
                &FromWorker::Started {
                    job_id: "j1".into(),
                    pgid: 77,
                },
                "0000001a81a75374617274656482a66a6f625f6964a26a31a4706769644d",
            ),
            (
                &FromWorker::Finished {
                    job_id: "j1".into(),
                    result: RunResult {
                        outcome: Outcome::Exited(3),
                        duration_ms: 12,
                        stdout: b"hi\n".to_vec(),
                        stderr: vec![0xff],
                    },
                },
                concat!(
                    "0000005181a846696e697368656482a66a6f625f6964a26a31a6726573756c74",
                    "84a76f7574636f6d6581a645786974656403ab6475726174696f6e5f6d730ca6",
                    "7374646f7574c40368690aa6737464657272c401ff",
                ),
            ),
        ];
        for (msg, golden) in cases {
            assert_eq!(frame(msg), golden);
        }
        // And the pinned bytes read back.
        let (_, finished) = cases[4];
        let bytes: Vec<u8> = (0..finished.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&finished[i..i + 2], 16).unwrap())
            .collect();
        let back: FromWorker = read_frame(&mut &bytes[..]).unwrap().unwrap();
        assert!(matches!(back, FromWorker::Finished { ref job_id, .. } if job_id == "j1"));
    }

    /// Frames of either direction behind one trait object, for the golden table.
    mod erased {
        pub trait Frame {
            fn frame(&self) -> Vec<u8>;
        }

        impl<T: serde::Serialize> Frame for T {
            fn frame(&self) -> Vec<u8> {
                let mut buf = Vec::new();
                super::write_frame(&mut buf, self).unwrap();
                buf
            }
        }
    }
}
