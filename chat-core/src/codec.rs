//! MessagePack and JSON, one function each way.
//!
//! Encoding writes structs as string-keyed maps (what seed clients expect; plain
//! `rmp_serde::to_vec` would write arrays). Decoding picks the format from the first
//! non-whitespace byte: `{` or `[` means JSON, anything else MessagePack (a MessagePack
//! request is a map, whose first byte is never `{` or `[`).
//!
//! Every frame of the protocol (request, reply, publication, announcement, replicated
//! event) is a map, and is read with [`decode_map`]: a top-level array, number, string,
//! boolean or nil is refused, naming what was expected. (serde would otherwise read a
//! struct from an array, field by field in declaration order, in both formats.)

use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, DeserializeOwned, DeserializeSeed, Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize};

/// The two wire encodings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Encoding {
    /// MessagePack (the default).
    #[default]
    MsgPack,
    /// JSON (UTF-8 text).
    Json,
}

impl Encoding {
    /// The encoding a frame is in, judged by its first non-whitespace byte (`{` or `[`: JSON).
    pub fn detect(bytes: &[u8]) -> Encoding {
        match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
            Some(b'{' | b'[') => Encoding::Json,
            _ => Encoding::MsgPack,
        }
    }

    /// Reads `msgpack` / `json` (any case), for flags and environment variables.
    pub fn parse(s: &str) -> Option<Encoding> {
        match s.to_ascii_lowercase().as_str() {
            "msgpack" | "messagepack" | "mp" => Some(Encoding::MsgPack),
            "json" => Some(Encoding::Json),
            _ => None,
        }
    }
}

/// Why a frame could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct CodecError(pub String);

/// Encodes a value as a map-shaped MessagePack or JSON frame.
pub fn encode<T: Serialize + ?Sized>(value: &T, encoding: Encoding) -> Result<Vec<u8>, CodecError> {
    match encoding {
        Encoding::MsgPack => rmp_serde::to_vec_named(value).map_err(|e| CodecError(e.to_string())),
        Encoding::Json => serde_json::to_vec(value).map_err(|e| CodecError(e.to_string())),
    }
}

/// Deepest MessagePack nesting accepted (serde_json's limit). rmp-serde's own default of
/// 1024 levels needs more than 2 MiB of stack in debug builds, so a 1 KiB frame of nested
/// arrays would overflow a spawned thread's stack and abort the process.
const MAX_MSGPACK_DEPTH: usize = 128;

/// Decodes a frame, detecting its encoding; returns the value and the encoding found.
///
/// A struct is read from a map *or an array* (serde's positional form): protocol frames,
/// which are maps, are read with [`decode_map`] instead.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<(T, Encoding), (CodecError, Encoding)> {
    decode_seed(bytes, PhantomData::<T>)
}

/// Decodes a frame whose top-level value must be a map, detecting its encoding; returns the
/// value and the encoding found. Anything else at the top level (array, number, string,
/// boolean, nil) is an error that names what was `expected`, e.g. "invalid type: sequence,
/// expected a request: a map with `service` and `data`".
pub fn decode_map<T: DeserializeOwned>(
    bytes: &[u8],
    expected: &'static str,
) -> Result<(T, Encoding), (CodecError, Encoding)> {
    decode_seed(
        bytes,
        MapOnly {
            expected,
            value: PhantomData::<T>,
        },
    )
}

fn decode_seed<T, S>(bytes: &[u8], seed: S) -> Result<(T, Encoding), (CodecError, Encoding)>
where
    S: for<'de> DeserializeSeed<'de, Value = T>,
{
    let encoding = Encoding::detect(bytes);
    let result = match encoding {
        Encoding::MsgPack => {
            let mut de = rmp_serde::Deserializer::from_read_ref(bytes);
            de.set_max_depth(MAX_MSGPACK_DEPTH);
            seed.deserialize(&mut de)
                .map_err(|e| CodecError(e.to_string()))
        }
        Encoding::Json => {
            // What `serde_json::from_slice` does: the value, then nothing but whitespace.
            let mut de = serde_json::Deserializer::from_slice(bytes);
            seed.deserialize(&mut de)
                .and_then(|v| de.end().map(|()| v))
                .map_err(|e| CodecError(e.to_string()))
        }
    };
    match result {
        Ok(v) => Ok((v, encoding)),
        Err(e) => Err((e, encoding)),
    }
}

/// Reads a `T` from a map and from nothing else.
struct MapOnly<T> {
    expected: &'static str,
    value: PhantomData<T>,
}

impl<'de, T: Deserialize<'de>> DeserializeSeed<'de> for MapOnly<T> {
    type Value = T;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<T, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de, T: Deserialize<'de>> Visitor<'de> for MapOnly<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.expected)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
        // The same entries, read by `T` as it reads any map.
        T::deserialize(de::value::MapAccessDeserializer::new(map))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn detects_json_by_first_byte() {
        assert_eq!(Encoding::detect(b"{\"a\":1}"), Encoding::Json);
        assert_eq!(Encoding::detect(b"  \n{}"), Encoding::Json);
        assert_eq!(Encoding::detect(&[0x81, 0xa1, b'a', 1]), Encoding::MsgPack);
        assert_eq!(Encoding::detect(b""), Encoding::MsgPack);
    }

    #[test]
    fn maps_not_arrays() {
        #[derive(serde::Serialize)]
        struct S {
            a: u8,
        }
        assert_eq!(
            encode(&S { a: 1 }, Encoding::MsgPack).unwrap(),
            vec![0x81, 0xa1, b'a', 1]
        );
        assert_eq!(
            encode(&S { a: 1 }, Encoding::Json).unwrap(),
            b"{\"a\":1}".to_vec()
        );
    }

    #[test]
    fn decode_reports_encoding_on_error() {
        let (_, enc) = decode::<BTreeMap<String, u8>>(b"{not json").unwrap_err();
        assert_eq!(enc, Encoding::Json);
        let (_, enc) = decode::<BTreeMap<String, u8>>(&[0xc1]).unwrap_err();
        assert_eq!(enc, Encoding::MsgPack);
    }
}
