//! What a message carries inside the encryption (docs/MESSAGING.md, "Message payloads"): a
//! text or a file chunk, and the rule that turns names from the network into file names.

use zeroize::Zeroizing;

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

/// The payload as encrypted (padding comes with issue 13, item 8).
pub fn pad(payload: &[u8]) -> Zeroizing<Vec<u8>> {
    Zeroizing::new(payload.to_vec())
}

/// The payload inside a decrypted message; `None` if the padding is malformed.
pub fn unpad(padded: &[u8]) -> Option<&[u8]> {
    Some(padded)
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
