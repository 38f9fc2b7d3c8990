//! The codec of every generated service and client: prost's, except that bytes that do not
//! decode as the expected message are the sender's mistake. tonic's own codec answers them
//! `INTERNAL` ("failed to decode Protobuf message"), which tells a caller that sent garbage,
//! or a `Struct` nested past the decoder's recursion limit, that the server broke. Here they
//! are `INVALID_ARGUMENT` with the reason `MALFORMED_MESSAGE` and a `BadRequest` violation
//! saying what did not decode (field names and wire facts only, never the bytes). A request
//! whose text holds a control character is refused the same way (see [`crate::screen`]).

use std::marker::PhantomData;

use prost::bytes::Buf;
use prost::{Message, Name};
use tonic::Status;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};

/// The `ErrorInfo.reason` of a message that does not decode.
pub const MALFORMED_MESSAGE: &str = "MALFORMED_MESSAGE";

/// prost's codec with decode errors answered as `INVALID_ARGUMENT` (see the module).
#[derive(Debug, Clone)]
pub struct ProstCodec<T, U> {
    _pd: PhantomData<(T, U)>,
}

impl<T, U> Default for ProstCodec<T, U> {
    fn default() -> Self {
        Self { _pd: PhantomData }
    }
}

impl<T, U> Codec for ProstCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Name + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = tonic_prost::ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        tonic_prost::ProstEncoder::new(BufferSettings::default())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstDecoder { _pd: PhantomData }
    }
}

/// Decodes `U`, answering `INVALID_ARGUMENT` for bytes that are not one.
#[derive(Debug, Clone)]
pub struct ProstDecoder<U> {
    _pd: PhantomData<U>,
}

impl<U: Message + Name + Default> Decoder for ProstDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, Self::Error> {
        // Requests (every one is named `…Request`, which buf lint enforces) are screened for
        // control characters too (crate::screen); answers are what the server stored.
        let len = buf.remaining();
        if !U::NAME.ends_with("Request") || buf.chunk().len() < len {
            return U::decode(buf).map(Some).map_err(|e| malformed(&e));
        }
        let bytes = &buf.chunk()[..len];
        let message = U::decode(bytes).map_err(|e| malformed(&e))?;
        crate::screen::screen(&U::full_name(), bytes).map_err(|r| crate::screen::refused(&r))?;
        buf.advance(len);
        Ok(Some(message))
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::default()
    }
}

/// The status of a message that did not decode.
pub fn malformed(error: &prost::DecodeError) -> Status {
    use tonic_types::{ErrorDetails, StatusExt};
    let description = format!("is not a valid protobuf encoding of the expected message: {error}");
    let mut details = ErrorDetails::new();
    details.add_bad_request_violation("message", description.clone());
    details.set_error_info(MALFORMED_MESSAGE, "postern", std::collections::HashMap::new());
    Status::with_error_details(tonic::Code::InvalidArgument, format!("invalid request: message {description}"), details)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_errors_are_invalid_argument() {
        // A length-delimited field 1 of 2 bytes that are not UTF-8 (GetTenant's `name`).
        let err = prost_types::Any::decode(&[0x0a, 0x02, 0xff, 0xfe][..]).expect_err("not UTF-8");
        let status = malformed(&err);
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(status.message().contains("not a valid protobuf encoding"), "{}", status.message());
    }
}
