//! Layer streams: the decompressor a stream's magic bytes call for, and a thread that hashes and
//! decompresses a blob while the caller writes files.

use std::io::{self, BufRead, BufReader, Read};
use std::sync::mpsc::{sync_channel, Receiver};
use std::thread::JoinHandle;

use crate::digest::{Digest, HashingReader};

/// Wraps a layer stream in the decompressor its magic bytes call for.
pub fn decompress<'a, R: BufRead + 'a>(mut r: R) -> io::Result<Box<dyn Read + 'a>> {
    let head = r.fill_buf()?;
    if head.starts_with(&[0x1f, 0x8b]) {
        Ok(Box::new(flate2::bufread::MultiGzDecoder::new(r)))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Ok(Box::new(zstd::stream::read::Decoder::with_buffer(r)?))
    } else {
        Ok(Box::new(r))
    }
}

/// A `Read` over chunks sent by another thread.
pub(super) struct ChannelReader {
    rx: Receiver<io::Result<Vec<u8>>>,
    chunk: Vec<u8>,
    pos: usize,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.chunk.len() {
            match self.rx.recv() {
                Ok(Ok(c)) => {
                    self.chunk = c;
                    self.pos = 0;
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => return Ok(0), // producer done
            }
        }
        let n = buf.len().min(self.chunk.len() - self.pos);
        buf[..n].copy_from_slice(&self.chunk[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Reads a blob, hashing and decompressing it, on its own thread: the caller writes files
/// meanwhile (two cores: hashing + inflating on one, tar + file writes on the other).
pub(super) fn spawn_decompressor(
    mut blob: HashingReader<std::fs::File>,
) -> (ChannelReader, JoinHandle<io::Result<Digest>>) {
    let (tx, rx) = sync_channel::<io::Result<Vec<u8>>>(16);
    let handle = std::thread::spawn(move || {
        let res = (|| {
            let mut dec = decompress(BufReader::with_capacity(1 << 20, &mut blob))?;
            loop {
                let mut buf = vec![0u8; 256 << 10];
                let mut n = 0;
                while n < buf.len() {
                    match dec.read(&mut buf[n..])? {
                        0 => break,
                        k => n += k,
                    }
                }
                if n == 0 {
                    return Ok(());
                }
                buf.truncate(n);
                if tx.send(Ok(buf)).is_err() {
                    return Err(io::Error::other("unpack stopped"));
                }
            }
        })();
        match res {
            Ok(()) => blob.finish().map(|(d, _)| d),
            Err(e) => {
                let _ = tx.send(Err(io::Error::new(e.kind(), e.to_string())));
                Err(e)
            }
        }
    });
    (
        ChannelReader {
            rx,
            chunk: Vec::new(),
            pos: 0,
        },
        handle,
    )
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    #[test]
    fn reads_all_three_compressions() {
        let data = b"hello world".repeat(100);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&data).unwrap();
        let gz = gz.finish().unwrap();
        let zs = zstd::encode_all(&data[..], 1).unwrap();
        for input in [data.clone(), gz, zs] {
            let mut out = Vec::new();
            decompress(&input[..])
                .unwrap()
                .read_to_end(&mut out)
                .unwrap();
            assert_eq!(out, data);
        }
    }
}
