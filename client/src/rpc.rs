//! Turning response frames into typed answers or [`ClientError::Broker`].

use shardmq_protocol::message::{decode_reply, Reply};
use shardmq_protocol::{Frame, ReplyError, Status, Wire};

use crate::error::ClientError;

/// The typed fields of a response to a request expecting `T`, with the status (Success, or
/// one of `typed`). Any other status is a [`ClientError::Broker`]; one whose remark does not
/// decode keeps its status (a failure status matters more than its remark).
pub(crate) fn expect<T: Wire>(frame: &Frame, typed: &[Status]) -> Result<(Status, T), ClientError> {
    match decode_reply::<T>(frame, typed) {
        Ok(Reply::Typed(status, v)) => Ok((status, v)),
        Ok(Reply::Error(status, remark)) => Err(ClientError::Broker { status, remark }),
        Err(ReplyError::Fields(e)) => match frame.header.status() {
            Some(status) if status != Status::Success && !typed.contains(&status) => {
                Err(ClientError::Broker {
                    status,
                    remark: format!("(undecodable remark: {e})"),
                })
            }
            _ => Err(ClientError::Reply(ReplyError::Fields(e))),
        },
        Err(e) => Err(ClientError::Reply(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use shardmq_protocol::message::{error_response, response, OffsetResponse};
    use shardmq_protocol::{Header, Opcode};

    #[test]
    fn typed_error_and_undecodable_answers() {
        let h = Header::request(Opcode::GetMaxOffset, 5);
        let ok = response(&h, Status::Success, &OffsetResponse { offset: 7 });
        let (st, v) = expect::<OffsetResponse>(&ok, &[]).unwrap();
        assert_eq!((st, v.offset), (Status::Success, 7));

        let err = error_response(&h, Status::TopicNotExist, "no such topic");
        let e = expect::<OffsetResponse>(&err, &[]).unwrap_err();
        assert!(
            matches!(e, ClientError::Broker { status: Status::TopicNotExist, ref remark } if remark == "no such topic")
        );

        let odd = Frame::new(
            h.response_to(Status::SystemBusy),
            Bytes::from_static(&[1]),
            Bytes::new(),
        );
        let e = expect::<OffsetResponse>(&odd, &[]).unwrap_err();
        assert_eq!(e.status(), Some(Status::SystemBusy));

        let bad_ok = Frame::new(h.response_to(Status::Success), Bytes::new(), Bytes::new());
        assert!(matches!(
            expect::<OffsetResponse>(&bad_ok, &[]),
            Err(ClientError::Reply(_))
        ));
        let unknown = Frame::new(
            Header {
                status: 999,
                ..h.response_to(Status::Success)
            },
            Bytes::new(),
            Bytes::new(),
        );
        assert!(matches!(
            expect::<OffsetResponse>(&unknown, &[]),
            Err(ClientError::Reply(ReplyError::UnknownStatus(999)))
        ));
    }
}
