//! Bounded readers and writers for the messaging encodings: every read is checked, so
//! parsing untrusted bytes returns an error instead of panicking.

use zeroize::Zeroizing;

use super::MsgError;

/// Reads fields front to back; any short read yields the error given at construction.
pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
    short: MsgError,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8], short: MsgError) -> Self {
        Self { bytes, short }
    }

    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], MsgError> {
        if self.bytes.len() < n {
            return Err(self.short.clone());
        }
        let (head, tail) = self.bytes.split_at(n);
        self.bytes = tail;
        Ok(head)
    }

    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N], MsgError> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    /// A secret array, wrapped so the copy is zeroized when dropped.
    pub(crate) fn secret<const N: usize>(&mut self) -> Result<Zeroizing<[u8; N]>, MsgError> {
        let mut out = Zeroizing::new([0; N]);
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, MsgError> {
        Ok(self.take(1)?[0])
    }

    pub(crate) fn u16(&mut self) -> Result<u16, MsgError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    pub(crate) fn u32(&mut self) -> Result<u32, MsgError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    pub(crate) fn u64(&mut self) -> Result<u64, MsgError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    /// A flag byte that must be 0 or 1.
    pub(crate) fn flag(&mut self) -> Result<bool, MsgError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(self.short.clone()),
        }
    }

    /// Everything not read yet, without consuming it.
    pub(crate) fn peek_rest(&self) -> &'a [u8] {
        self.bytes
    }

    /// Everything not read yet.
    pub(crate) fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.bytes)
    }

    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Succeeds only if every byte was read.
    pub(crate) fn finish(&self) -> Result<(), MsgError> {
        if self.bytes.is_empty() {
            Ok(())
        } else {
            Err(self.short.clone())
        }
    }
}
