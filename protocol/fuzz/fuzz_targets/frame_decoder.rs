//! Feeds arbitrary bytes to the frame decoder, as a hostile peer would, and every frame it
//! takes off to the request and reply decoders.
//!
//! Properties checked (besides "never panics, never aborts on allocation"):
//! - `decode` takes exactly one frame's encoded bytes off the front, never more than the
//!   buffer holds, and only frames within the configured limit;
//! - `needed` never asks for more than the limit allows;
//! - a request that does not decode is answered with RequestCodeNotSupported or BadRequest.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use shardmq_protocol::message::{PullMessageResponse, PULL_TYPED};
use shardmq_protocol::{decode_reply, FrameDecoder, Request, Status};

/// Length prefix bytes (not exported by name from the crate root).
const LENGTH_BYTES: usize = 4;

fuzz_target!(|data: &[u8]| {
    // The first byte picks a small limit (at least the header, which the decoder enforces
    // anyway) so that frames near and over it are both reachable with short inputs.
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let max = 16 + u32::from(pick) * 4;
    let decoder = FrameDecoder::new(max);
    let max = decoder.max_length() as usize;

    let mut buf = BytesMut::from(rest);
    loop {
        let before = buf.len();
        match decoder.decode(&mut buf) {
            Ok(Some(frame)) => {
                assert!(buf.len() <= before, "the buffer grew");
                let taken = before - buf.len();
                assert_eq!(taken, frame.encoded_len(), "took other than one frame");
                assert!(frame.length() <= max, "frame over the limit");

                // What a server does with it.
                match Request::from_frame(&frame) {
                    Ok(req) => assert_eq!(req.opcode().as_u16(), frame.header.opcode),
                    Err(e) => assert!(matches!(
                        e.status(),
                        Status::RequestCodeNotSupported | Status::BadRequest
                    )),
                }
                // What a client does with it.
                let _ = decode_reply::<PullMessageResponse>(&frame, PULL_TYPED);
                let _ = decode_reply::<PullMessageResponse>(&frame, &[]);
            }
            Ok(None) => {
                // Nothing taken while waiting for more bytes.
                assert_eq!(buf.len(), before, "Ok(None) consumed bytes");
                if let Ok(Some(n)) = decoder.needed(&buf) {
                    assert!(n > buf.len(), "needs {n} but {} are there", buf.len());
                    assert!(n <= LENGTH_BYTES + max, "needs {n} over the limit {max}");
                }
                break;
            }
            Err(_) => {
                // The connection would be closed; nothing may have been taken.
                assert_eq!(buf.len(), before, "an error consumed bytes");
                break;
            }
        }
    }
});
