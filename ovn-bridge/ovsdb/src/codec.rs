//! The JSON-RPC stream codec: OVSDB sends JSON values back to back with no
//! framing, so the decoder finds value boundaries itself by tracking strings,
//! escapes and bracket depth, and refuses values larger than a limit.
//!
//! Owns byte-level framing only. It must not interpret messages (that is
//! [`crate::rpc`]) and never panics on any input.

use serde_json::Value;

/// Default limit on one message: 64 MiB (a full SB dump of a large cluster).
pub const DEFAULT_MAX_MESSAGE: usize = 64 << 20;

/// A stream that cannot be split into JSON values.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum CodecError {
    /// A byte that cannot start a JSON-RPC message (which is always an object).
    #[error("garbage byte 0x{0:02x} between messages")]
    Garbage(u8),
    /// A closing bracket with no matching opening one.
    #[error("unbalanced closing bracket")]
    Unbalanced,
    /// A message exceeded the size limit before it ended.
    #[error("message larger than {limit} bytes")]
    TooLarge {
        /// The configured limit.
        limit: usize,
    },
    /// The bytes between the boundaries are not valid JSON.
    #[error("invalid JSON: {0}")]
    InvalidJson(String),
}

/// Incremental splitter of concatenated JSON objects.
#[derive(Debug)]
pub struct JsonStreamDecoder {
    buf: Vec<u8>,
    /// Bytes of `buf` already scanned for the current value.
    scanned: usize,
    /// Start of the current value in `buf`, once its first byte was seen.
    start: Option<usize>,
    depth: usize,
    in_string: bool,
    escape: bool,
    max: usize,
}

impl JsonStreamDecoder {
    /// A decoder that refuses messages longer than `max` bytes.
    pub fn new(max: usize) -> Self {
        Self {
            buf: Vec::new(),
            scanned: 0,
            start: None,
            depth: 0,
            in_string: false,
            escape: false,
            max: max.max(2),
        }
    }

    /// Appends bytes received from the socket.
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Bytes received but not yet returned as messages.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Returns the next complete message, `Ok(None)` if more bytes are needed.
    /// After an error the stream is unusable (the connection must be dropped).
    pub fn next_message(&mut self) -> Result<Option<Value>, CodecError> {
        while self.scanned < self.buf.len() {
            let b = self.buf[self.scanned];
            let pos = self.scanned;
            self.scanned += 1;
            match self.start {
                None => match b {
                    b' ' | b'\t' | b'\r' | b'\n' => continue,
                    b'{' => {
                        self.start = Some(pos);
                        self.depth = 1;
                    }
                    other => return Err(CodecError::Garbage(other)),
                },
                Some(start) => {
                    if self.in_string {
                        if self.escape {
                            self.escape = false;
                        } else if b == b'\\' {
                            self.escape = true;
                        } else if b == b'"' {
                            self.in_string = false;
                        }
                    } else {
                        match b {
                            b'"' => self.in_string = true,
                            b'{' | b'[' => self.depth += 1,
                            b'}' | b']' => {
                                self.depth =
                                    self.depth.checked_sub(1).ok_or(CodecError::Unbalanced)?;
                                if self.depth == 0 {
                                    let end = pos + 1;
                                    let parsed =
                                        serde_json::from_slice::<Value>(&self.buf[start..end]);
                                    self.buf.drain(..end);
                                    self.scanned = 0;
                                    self.start = None;
                                    return parsed
                                        .map(Some)
                                        .map_err(|e| CodecError::InvalidJson(e.to_string()));
                                }
                            }
                            _ => {}
                        }
                    }
                    if pos + 1 - start > self.max {
                        return Err(CodecError::TooLarge { limit: self.max });
                    }
                }
            }
        }
        // Drop leading whitespace so an idle stream does not grow the buffer.
        if self.start.is_none() {
            self.buf.clear();
            self.scanned = 0;
        }
        Ok(None)
    }
}

/// Serializes one message.
pub fn encode(v: &Value) -> Vec<u8> {
    // Serializing a `Value` cannot fail (all keys are strings).
    serde_json::to_vec(v).unwrap_or_default()
}

/// Fuzz body: feeds `data` to a decoder in chunks chosen by the data itself,
/// and checks that every value decoded re-encodes and decodes to itself.
/// Panics only when that property is broken.
pub fn fuzz_codec(data: &[u8]) {
    let (chunk, body) = match data.split_first() {
        Some((c, rest)) => (usize::from(*c % 17) + 1, rest),
        None => return,
    };
    let mut dec = JsonStreamDecoder::new(4096);
    for piece in body.chunks(chunk) {
        dec.push(piece);
        loop {
            match dec.next_message() {
                Ok(Some(v)) => {
                    let bytes = encode(&v);
                    let mut again = JsonStreamDecoder::new(usize::MAX);
                    again.push(&bytes);
                    let back = again.next_message();
                    assert_eq!(back, Ok(Some(v)), "re-encoded message did not round-trip");
                    // Whatever the message is, interpreting it must not panic.
                    let _ = crate::rpc::Message::from_json(back.ok().flatten().unwrap_or_default());
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn all(dec: &mut JsonStreamDecoder) -> Result<Vec<Value>, CodecError> {
        let mut out = Vec::new();
        while let Some(v) = dec.next_message()? {
            out.push(v);
        }
        Ok(out)
    }

    #[test]
    fn splits_concatenated_values_byte_by_byte() {
        let input = br#"{"id":1,"s":"a}\"{["}  {"x":[1,{"y":"]"}]}
{"z":"\\"}"#;
        let mut dec = JsonStreamDecoder::new(1024);
        let mut got = Vec::new();
        for b in input.iter() {
            dec.push(&[*b]);
            got.extend(all(&mut dec).unwrap());
        }
        assert_eq!(
            got,
            vec![
                json!({"id":1,"s":"a}\"{["}),
                json!({"x":[1,{"y":"]"}]}),
                json!({"z":"\\"})
            ]
        );
        assert_eq!(dec.buffered(), 0);
    }

    #[test]
    fn refuses_garbage_oversize_and_bad_json() {
        let mut dec = JsonStreamDecoder::new(1024);
        dec.push(b"hello");
        assert_eq!(dec.next_message(), Err(CodecError::Garbage(b'h')));

        let mut dec = JsonStreamDecoder::new(16);
        dec.push(br#"{"a":"0123456789012345"#);
        assert_eq!(dec.next_message(), Err(CodecError::TooLarge { limit: 16 }));

        let mut dec = JsonStreamDecoder::new(1024);
        dec.push(br#"{"a":]}"#);
        assert!(matches!(
            dec.next_message(),
            Err(CodecError::InvalidJson(_))
        ));

        let mut dec = JsonStreamDecoder::new(1024);
        dec.push(br#"{"a":1"#);
        assert_eq!(dec.next_message(), Ok(None));
    }

    /// Found by the fuzzer: a large real must survive decode/encode/decode
    /// exactly (serde_json's `float_roundtrip`), as OVSDB reals are compared.
    #[test]
    fn large_real_round_trips() {
        let mut data = b"J{\n\n\"\":\n".to_vec();
        data.extend(vec![b'9'; 22]);
        data.push(b'1');
        data.extend(vec![b'9'; 88]);
        data.extend_from_slice(b"}1-(]");
        fuzz_codec(&data);
        let mut dec = JsonStreamDecoder::new(4096);
        dec.push(&data[1..]);
        assert!(matches!(dec.next_message(), Ok(Some(_))));
    }

    /// Deterministic mutation fuzzing of the codec over seed messages.
    #[test]
    fn fuzz_codec_survives_mutations() {
        let seeds: [&[u8]; 5] = [
            br#"{"id":1,"method":"echo","params":[]}"#,
            br#"{"id":null,"method":"update3","params":[["m"],"6a1b",{"T":{"u":{"modify":{"c":["map",[["k","v"]]]}}}}]}"#,
            br#"{"id":2,"result":[{"uuid":["uuid","0d1b4a6c-6c5e-4c47-9a1c-5dfd4a8e2b1c"]},{"error":"x","details":"y\"z"}],"error":null}"#,
            b"{\"a\":\"\\u00e9\\\\\"}\n{\"b\":[[[]]]}",
            br#"{"id":"x","error":{"error":"unknown method"},"result":null}"#,
        ];
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut decoded_some = 0usize;
        for i in 0..100_000u32 {
            let seed = seeds[(i as usize) % seeds.len()];
            let mut data = vec![(next() & 0xff) as u8];
            data.extend_from_slice(seed);
            let mutations = (next() % 4) as usize;
            for _ in 0..mutations {
                let r = next();
                let pos = (r as usize >> 8) % data.len();
                match r % 4 {
                    0 => data[pos] = (r >> 40) as u8,
                    1 => data.insert(pos, b"{}[]\"\\,:"[(r >> 40) as usize % 8]),
                    2 => {
                        data.remove(pos);
                        if data.is_empty() {
                            data.push(0);
                        }
                    }
                    _ => data.truncate(pos.max(1)),
                }
            }
            fuzz_codec(&data);
            let mut dec = JsonStreamDecoder::new(4096);
            dec.push(&data[1..]);
            if let Ok(Some(_)) = dec.next_message() {
                decoded_some += 1;
            }
        }
        // The mutations must leave a good share of valid messages, or the
        // fuzzing exercised only the error paths.
        assert!(decoded_some > 10_000, "only {decoded_some} inputs decoded");
    }
}
