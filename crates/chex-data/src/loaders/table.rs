//! A thin layer over the `csv` crate that every loader shares: transparent `.gz`, header
//! lookup by name, and errors that carry the file and line.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use crate::error::{DataError, Result};

/// A CSV file opened for reading, with its header.
pub(crate) struct Table {
    pub file: PathBuf,
    pub header: Vec<String>,
    reader: csv::Reader<CrlfToLf<BufReader<Box<dyn Read>>>>,
}

/// One data row with its 1-based line number in the file.
pub(crate) struct Row {
    pub line: u64,
    pub fields: csv::StringRecord,
}

impl Table {
    /// Opens `path`, or `path.gz` when only the compressed file exists.
    pub fn open(path: &Path) -> Result<Self> {
        let path = resolve_gz(path);
        let file = File::open(&path).map_err(|e| DataError::io(&path, e))?;
        let reader: Box<dyn Read> = if path.extension().is_some_and(|e| e == "gz") {
            Box::new(flate2::read::MultiGzDecoder::new(BufReader::new(file)))
        } else {
            Box::new(BufReader::new(file))
        };
        // The CSV layer counts a CRLF file's lines one short; with LF endings it counts right.
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .from_reader(CrlfToLf::new(reader));
        let mut first = csv::StringRecord::new();
        let has_header = reader
            .read_record(&mut first)
            .map_err(|e| csv_error(&path, &e))?;
        if !has_header {
            return Err(DataError::Csv {
                file: path,
                line: 1,
                message: "the file is empty (no header)".into(),
            });
        }
        let header: Vec<String> = first
            .iter()
            .map(|h| h.trim_start_matches('\u{feff}').trim().to_string())
            .collect();
        // A repeated name would make "the" column ambiguous; unnamed columns are harmless.
        let mut names = std::collections::HashSet::new();
        if let Some(repeated) = header
            .iter()
            .filter(|h| !h.is_empty())
            .find(|h| !names.insert(h.as_str()))
        {
            return Err(DataError::DuplicateColumn {
                file: path,
                column: repeated.clone(),
            });
        }
        Ok(Self {
            file: path,
            header,
            reader,
        })
    }

    /// Index of a required column.
    pub fn column(&self, name: &str) -> Result<usize> {
        self.header
            .iter()
            .position(|h| h == name)
            .ok_or_else(|| DataError::MissingColumn {
                file: self.file.clone(),
                column: name.to_string(),
            })
    }

    /// Next row, or `None` at the end. A row the CSV layer cannot parse (bad quoting, bad
    /// UTF-8) is an error naming its line.
    pub fn next_row(&mut self) -> Option<Result<Row>> {
        let mut record = csv::StringRecord::new();
        match self.reader.read_record(&mut record) {
            Ok(false) => None,
            Ok(true) => {
                let line = record.position().map_or(0, |p| p.line());
                Some(Ok(Row {
                    line,
                    fields: record,
                }))
            }
            Err(e) => Some(Err(csv_error(&self.file, &e))),
        }
    }

    /// Checks a row has exactly `expected` fields (trailing empty fields are tolerated, as
    /// some official files end rows with a comma).
    pub fn check_len(&self, row: &Row, expected: usize) -> Result<()> {
        let mut found = row.fields.len();
        while found > expected && row.fields.get(found - 1).is_some_and(|f| f.is_empty()) {
            found -= 1;
        }
        if found != expected {
            return Err(DataError::RowLength {
                file: self.file.clone(),
                line: row.line,
                expected,
                found: row.fields.len(),
            });
        }
        Ok(())
    }
}

/// Reads `inner` with every CR that ends a line (CR LF) dropped.
struct CrlfToLf<R> {
    inner: R,
}

impl<R: Read> CrlfToLf<BufReader<R>> {
    fn new(inner: R) -> Self {
        Self {
            inner: BufReader::new(inner),
        }
    }
}

impl<R: BufRead> Read for CrlfToLf<R> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        let mut written = 0;
        while written < out.len() {
            let buffer = self.inner.fill_buf()?;
            let Some(&byte) = buffer.first() else {
                break;
            };
            if byte == b'\r' {
                let followed_by_lf = match buffer.get(1) {
                    Some(&next) => next == b'\n',
                    None => {
                        // The CR ends this buffer: look at the next one.
                        self.inner.consume(1);
                        if self.inner.fill_buf()?.first() == Some(&b'\n') {
                            continue;
                        }
                        out[written] = b'\r';
                        written += 1;
                        continue;
                    }
                };
                if followed_by_lf {
                    self.inner.consume(1);
                    continue;
                }
            }
            // Copy the run of ordinary bytes at once.
            let run = buffer
                .iter()
                .take(out.len() - written)
                .position(|b| *b == b'\r')
                .unwrap_or_else(|| buffer.len().min(out.len() - written))
                .max(1);
            out[written..written + run].copy_from_slice(&buffer[..run]);
            written += run;
            self.inner.consume(run);
        }
        Ok(written)
    }
}

fn resolve_gz(path: &Path) -> PathBuf {
    if path.exists() {
        return path.to_path_buf();
    }
    let mut gz = path.as_os_str().to_owned();
    gz.push(".gz");
    let gz = PathBuf::from(gz);
    if gz.exists() { gz } else { path.to_path_buf() }
}

fn csv_error(file: &Path, error: &csv::Error) -> DataError {
    let line = error.position().map_or(0, |p| p.line());
    DataError::Csv {
        file: file.to_path_buf(),
        line,
        message: error.to_string(),
    }
}

/// Reads a list file (one image name a line), as NIH's `train_val_list.txt`.
pub(crate) fn read_list(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).map_err(|e| DataError::io(path, e))?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crlf_becomes_lf_across_buffer_boundaries_and_lone_crs_stay() {
        let text = b"a,b\r\nc\rd\r\n\r\ne\r";
        for capacity in [1, 2, 3, 64] {
            let mut reader = CrlfToLf {
                inner: BufReader::with_capacity(capacity, &text[..]),
            };
            let mut out = Vec::new();
            reader.read_to_end(&mut out).unwrap();
            assert_eq!(out, b"a,b\nc\rd\n\ne\r", "capacity {capacity}");
        }
    }
}
