//! What a message carries inside the encryption (docs/MESSAGING.md, "Message payloads"): a
//! text or a file chunk, and the rule that turns names from the network into file names.

use zeroize::Zeroizing;

use crate::proto::msg::MAX_PLAINTEXT_LEN;

/// Payload type byte of a text message.
pub const PAYLOAD_TEXT: u8 = 0x01;
/// Payload type byte of a file chunk.
pub const PAYLOAD_FILE_CHUNK: u8 = 0x02;

/// One chunk of a file transfer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileChunk<'a> {
    /// Random id of the transfer.
    pub transfer: [u8; 16],
    /// This chunk's index, from 0.
    pub index: u32,
    /// Chunks in the transfer.
    pub count: u32,
    /// The file's size in bytes.
    pub size: u64,
    /// The name the sender gave (at most 255 bytes are sent; never used as a path as is).
    pub name: &'a str,
    /// The chunk's bytes.
    pub data: &'a [u8],
}

/// `0x01 || UTF-8 text`.
pub fn encode_text(text: &str) -> Vec<u8> {
    [&[PAYLOAD_TEXT][..], text.as_bytes()].concat()
}

/// `0x02 || transfer (16) || index (4) || count (4) || size (8) || name length (2) || name ||
/// data`.
pub fn encode_chunk(c: &FileChunk<'_>) -> Vec<u8> {
    let mut out = Vec::with_capacity(40 + c.name.len() + c.data.len());
    out.push(PAYLOAD_FILE_CHUNK);
    out.extend_from_slice(&c.transfer);
    out.extend_from_slice(&c.index.to_be_bytes());
    out.extend_from_slice(&c.count.to_be_bytes());
    out.extend_from_slice(&c.size.to_be_bytes());
    let mut end = c.name.len().min(255);
    while !c.name.is_char_boundary(end) {
        end -= 1;
    }
    let name = &c.name.as_bytes()[..end];
    out.extend_from_slice(&(name.len() as u16).to_be_bytes());
    out.extend_from_slice(name);
    out.extend_from_slice(c.data);
    out
}

/// A file chunk after its type byte; `None` if malformed.
pub fn decode_chunk(p: &[u8]) -> Option<FileChunk<'_>> {
    let transfer = p.get(..16)?.try_into().ok()?;
    let index = u32::from_be_bytes(p.get(16..20)?.try_into().ok()?);
    let count = u32::from_be_bytes(p.get(20..24)?.try_into().ok()?);
    let size = u64::from_be_bytes(p.get(24..32)?.try_into().ok()?);
    let name_len = usize::from(u16::from_be_bytes(p.get(32..34)?.try_into().ok()?));
    let name = std::str::from_utf8(p.get(34..34 + name_len)?).ok()?;
    let data = p.get(34 + name_len..)?;
    (index < count).then_some(FileChunk {
        transfer,
        index,
        count,
        size,
        name,
        data,
    })
}

/// The smallest padded payload: every text up to 255 bytes looks alike to the relay.
pub const MIN_PADDED: usize = 256;

/// The length `len` bytes of payload are padded to: the smallest power of two from
/// [`MIN_PADDED`] that holds them and the `0x80` marker, or, above 64 KiB, the largest
/// plaintext a message carries ([`MAX_PLAINTEXT_LEN`]).
pub fn padded_len(len: usize) -> usize {
    let need = len + 1;
    let bucket = need.max(MIN_PADDED).next_power_of_two();
    if bucket <= MAX_PLAINTEXT_LEN {
        bucket
    } else {
        MAX_PLAINTEXT_LEN.max(need)
    }
}

/// The payload as encrypted: `payload || 0x80 || 0x00...` up to [`padded_len`] (ISO/IEC
/// 7816-4 padding, as Signal pads), so the relay learns only the bucket of a message's
/// length, never the length.
pub fn pad(payload: &[u8]) -> Zeroizing<Vec<u8>> {
    let mut out = Zeroizing::new(Vec::with_capacity(padded_len(payload.len())));
    out.extend_from_slice(payload);
    out.push(0x80);
    out.resize(padded_len(payload.len()), 0);
    out
}

/// The payload inside a decrypted message: everything before the last `0x80` that only
/// zeros follow; `None` if there is no such marker.
pub fn unpad(padded: &[u8]) -> Option<&[u8]> {
    let end = padded.iter().rposition(|&b| b != 0)?;
    (padded[end] == 0x80).then_some(&padded[..end])
}

/// A received file's name made safe to put in a directory: its last path component, control
/// characters replaced, no leading dot (so never `.` or `..`), at most 200 bytes.
pub fn safe_file_name(name: &str) -> String {
    let base = name.rsplit(['/', '\\']).next().unwrap_or("");
    let mut cleaned = String::new();
    for c in base.chars() {
        if cleaned.len() + c.len_utf8() > 200 {
            break;
        }
        cleaned.push(if c.is_control() { '_' } else { c });
    }
    let cleaned = cleaned.trim_start_matches('.').to_string();
    if cleaned.is_empty() {
        "file".into()
    } else {
        cleaned
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padding_hides_lengths_within_buckets() {
        for (len, want) in [
            (0, 256),
            (1, 256),
            (255, 256),
            (256, 512),
            (1000, 1024),
            (65_535, 65_536),
            (65_536, MAX_PLAINTEXT_LEN),
        ] {
            let payload = vec![0x80; len];
            let padded = pad(&payload);
            assert_eq!(padded.len(), want, "{len}");
            assert_eq!(unpad(&padded), Some(&payload[..]), "{len}");
        }
        // A file chunk of FILE_CHUNK bytes with the longest name stays in the 64 KiB bucket.
        let chunk = encode_chunk(&FileChunk {
            transfer: [0; 16],
            index: 0,
            count: 1,
            size: 1,
            name: &"n".repeat(300),
            data: &vec![0; crate::msg::client::FILE_CHUNK],
        });
        assert_eq!(pad(&chunk).len(), 65_536);
        assert_eq!(unpad(&[1, 2, 0, 0]), None);
        assert_eq!(unpad(&[0; 8]), None);
        assert_eq!(unpad(&[]), None);
        assert_eq!(unpad(&[0x80]), Some(&[][..]));
    }

    #[test]
    fn chunks_round_trip_and_names_are_tamed() {
        let c = FileChunk {
            transfer: [9; 16],
            index: 2,
            count: 3,
            size: 10,
            name: "a.txt",
            data: b"xyz",
        };
        let enc = encode_chunk(&c);
        assert_eq!(decode_chunk(&enc[1..]), Some(c));
        assert!(decode_chunk(&enc[1..20]).is_none());
        assert_eq!(safe_file_name("../../etc/passwd"), "passwd");
        assert_eq!(safe_file_name("/etc/passwd"), "passwd");
        assert_eq!(safe_file_name("..\\..\\x"), "x");
        assert_eq!(safe_file_name(".bashrc"), "bashrc");
        assert_eq!(safe_file_name(".."), "file");
        assert_eq!(safe_file_name("a/"), "file");
        assert_eq!(safe_file_name(""), "file");
        assert_eq!(safe_file_name("a\nb"), "a_b");
        assert!(safe_file_name(&"é".repeat(300)).len() <= 200);
    }
}
