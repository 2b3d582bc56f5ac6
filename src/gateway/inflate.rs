//! Decompression of held record batches, with a ceiling.
//!
//! A batch for a pending topic is decoded to put its records in the spool. Compressed, a few
//! kilobytes can stand for gigabytes (a "zip bomb"), and the `kafka-protocol` crate's own
//! decompressors inflate whatever they are given. These read at most `limit` bytes out of a
//! codec and refuse the batch beyond that, so one Produce request costs at most its budget in
//! memory, whatever it claims. The codecs are the crates the `kafka-protocol` crate uses.

use std::io::Read;

use bytes::{Buf, Bytes};
use kafka_protocol::records::Compression;

/// xerial's snappy framing, which Kafka's Java client writes: a 16-byte header, then blocks of
/// a big-endian `u32` length and raw snappy. Without the header the bytes are raw snappy.
const XERIAL_HEADER: &[u8; 16] = b"\x82SNAPPY\x00\x00\x00\x00\x01\x00\x00\x00\x01";

#[derive(Debug, thiserror::Error)]
pub(crate) enum InflateError {
    #[error("the records decompress to more than {limit} bytes, the most KafFlow holds from one request")]
    TooLarge { limit: usize },
    #[error("the {codec:?} records do not decompress: {reason}")]
    Corrupt { codec: Compression, reason: String },
}

/// The records of one batch, decompressed, if they fit in `limit` bytes.
pub(crate) fn inflate(
    compressed: &mut Bytes,
    codec: Compression,
    limit: usize,
) -> Result<Bytes, InflateError> {
    let corrupt = |reason: String| InflateError::Corrupt { codec, reason };
    let input = compressed.copy_to_bytes(compressed.remaining());
    match codec {
        Compression::None => {
            if input.len() > limit {
                return Err(InflateError::TooLarge { limit });
            }
            Ok(input)
        }
        Compression::Gzip => read_capped(flate2::read::GzDecoder::new(input.reader()), limit)
            .map_err(|e| e.or_corrupt(codec)),
        Compression::Lz4 => {
            let decoder = lz4::Decoder::new(input.reader()).map_err(|e| corrupt(e.to_string()))?;
            read_capped(decoder, limit).map_err(|e| e.or_corrupt(codec))
        }
        Compression::Zstd => {
            let decoder = zstd::stream::read::Decoder::new(input.reader())
                .map_err(|e| corrupt(e.to_string()))?;
            read_capped(decoder, limit).map_err(|e| e.or_corrupt(codec))
        }
        Compression::Snappy => snappy(input, limit),
    }
}

/// A failure while reading a decoder: too much output, or the codec's own error.
enum Capped {
    TooLarge { limit: usize },
    Io(std::io::Error),
}

impl Capped {
    fn or_corrupt(self, codec: Compression) -> InflateError {
        match self {
            Capped::TooLarge { limit } => InflateError::TooLarge { limit },
            Capped::Io(e) => InflateError::Corrupt {
                codec,
                reason: e.to_string(),
            },
        }
    }
}

/// Reads `decoder` to its end, or fails once it has given more than `limit` bytes.
fn read_capped(decoder: impl Read, limit: usize) -> Result<Bytes, Capped> {
    let mut out = Vec::new();
    let ceiling = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
    decoder
        .take(ceiling)
        .read_to_end(&mut out)
        .map_err(Capped::Io)?;
    if out.len() > limit {
        return Err(Capped::TooLarge { limit });
    }
    Ok(Bytes::from(out))
}

/// Snappy, framed or raw: each block's length is read from its header and checked against
/// what is left of `limit` before anything is allocated for it.
fn snappy(input: Bytes, limit: usize) -> Result<Bytes, InflateError> {
    let corrupt = |reason: String| InflateError::Corrupt {
        codec: Compression::Snappy,
        reason,
    };
    let mut blocks = Vec::new();
    if input.starts_with(XERIAL_HEADER) {
        let mut rest = input.slice(XERIAL_HEADER.len()..);
        while rest.has_remaining() {
            if rest.remaining() < 4 {
                return Err(corrupt("a block length is cut short".into()));
            }
            let len = usize::try_from(rest.get_u32()).unwrap_or(usize::MAX);
            if len > rest.remaining() {
                return Err(corrupt("a block is cut short".into()));
            }
            blocks.push(rest.split_to(len));
        }
    } else {
        blocks.push(input);
    }
    let mut out = Vec::new();
    for block in blocks {
        let len = snap::raw::decompress_len(&block).map_err(|e| corrupt(e.to_string()))?;
        if len > limit.saturating_sub(out.len()) {
            return Err(InflateError::TooLarge { limit });
        }
        let start = out.len();
        out.resize(start + len, 0);
        snap::raw::Decoder::new()
            .decompress(&block, &mut out[start..])
            .map_err(|e| corrupt(e.to_string()))?;
    }
    Ok(Bytes::from(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::compression::{Compressor, Gzip, Lz4, Snappy, Zstd};

    fn compress(codec: Compression, plain: &[u8]) -> Bytes {
        let mut out = bytes::BytesMut::new();
        let put = |buf: &mut bytes::BytesMut| -> anyhow::Result<()> {
            buf.extend_from_slice(plain);
            Ok(())
        };
        match codec {
            Compression::Gzip => Gzip::compress(&mut out, put),
            Compression::Lz4 => Lz4::compress(&mut out, put),
            Compression::Zstd => Zstd::compress(&mut out, put),
            Compression::Snappy => Snappy::compress(&mut out, put),
            Compression::None => put(&mut out),
        }
        .expect("compress");
        out.freeze()
    }

    const CODECS: [Compression; 5] = [
        Compression::None,
        Compression::Gzip,
        Compression::Snappy,
        Compression::Lz4,
        Compression::Zstd,
    ];

    #[test]
    fn every_codec_round_trips_within_the_limit() {
        let plain: Vec<u8> = (0..100_000u32)
            .flat_map(|i| (i % 251).to_be_bytes())
            .collect();
        for codec in CODECS {
            let mut bytes = compress(codec, &plain);
            let out = inflate(&mut bytes, codec, plain.len()).expect("inflate");
            assert_eq!(&out[..], &plain[..], "{codec:?}");
        }
    }

    #[test]
    fn a_bomb_is_refused_at_the_limit_under_every_codec() {
        // 64 MiB of zeros compress to a few kilobytes under every codec but none.
        let plain = vec![0u8; 64 << 20];
        for codec in CODECS {
            let mut bytes = compress(codec, &plain);
            if codec != Compression::None {
                assert!(bytes.len() < 4 << 20, "{codec:?}: {}", bytes.len());
            }
            match inflate(&mut bytes, codec, 1 << 20) {
                Err(InflateError::TooLarge { limit }) => assert_eq!(limit, 1 << 20),
                other => panic!("{codec:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn garbage_is_corrupt_not_a_panic() {
        for codec in [
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ] {
            let mut bytes = Bytes::from_static(
                b"\x82SNAPPY\x00\x00\x00\x00\x01\x00\x00\x00\x01\xff\xff\xff\xff",
            );
            assert!(
                matches!(
                    inflate(&mut bytes, codec, 1 << 20),
                    Err(InflateError::Corrupt { .. })
                ),
                "{codec:?}"
            );
            let mut noise = Bytes::from_static(&[0x13; 40]);
            assert!(inflate(&mut noise, codec, 1 << 20).is_err(), "{codec:?}");
        }
    }
}
