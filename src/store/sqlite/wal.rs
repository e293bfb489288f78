//! A look at SQLite's write-ahead log before SQLite opens it. SQLite replays the log's frames
//! up to the first one whose checksum fails and silently ignores the rest — right for a torn
//! write at the end, wrong when bytes in the middle were damaged: every transaction after the
//! damage, acknowledged and durable, would vanish without a word. This reads the log as
//! SQLite does (the format is in https://www.sqlite.org/fileformat.html#the_write_ahead_log)
//! and reports committed frames that SQLite would drop.
//!
//! What it can tell: a frame of the log's own generation (its salts match the header's) that
//! marks a commit, lying after a frame that fails its checksum. What it cannot: damage that
//! leaves the checksums right (none is designed to) or damage to pages already copied into
//! the database file (that is `PRAGMA quick_check`'s, at start).

const HEADER: usize = 32;
const FRAME_HEADER: usize = 24;
const MAGIC_LE: u32 = 0x377f_0682;
const MAGIC_BE: u32 = 0x377f_0683;

#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// SQLite will replay every committed transaction in the log (or there is no log).
    Intact { frames: usize },
    /// Committed transactions that SQLite would drop.
    Damaged(String),
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// SQLite's WAL checksum, continued from `(s0, s1)` over `data` (a multiple of 8 bytes).
fn checksum(data: &[u8], big_endian: bool, (mut s0, mut s1): (u32, u32)) -> (u32, u32) {
    for pair in data.chunks_exact(8) {
        let word = |b: &[u8]| {
            let b = [b[0], b[1], b[2], b[3]];
            if big_endian { u32::from_be_bytes(b) } else { u32::from_le_bytes(b) }
        };
        s0 = s0.wrapping_add(word(&pair[..4])).wrapping_add(s1);
        s1 = s1.wrapping_add(word(&pair[4..])).wrapping_add(s0);
    }
    (s0, s1)
}

pub fn inspect(log: &[u8]) -> Verdict {
    if log.len() < HEADER {
        // Empty, or a header torn while being written: nothing was committed through it.
        return Verdict::Intact { frames: 0 };
    }
    let magic = be32(&log[0..]);
    let page_size = be32(&log[8..]) as usize;
    let frame_size = FRAME_HEADER + page_size;
    let frames_in_file = if page_size.is_power_of_two() && (512..=65536).contains(&page_size) {
        (log.len() - HEADER) / frame_size
    } else {
        0
    };
    let big_endian = magic == MAGIC_BE;
    let header_ok = (magic == MAGIC_LE || magic == MAGIC_BE)
        && frames_in_file > 0
        && checksum(&log[..24], big_endian, (0, 0)) == (be32(&log[24..]), be32(&log[28..]));
    if !header_ok {
        if frames_in_file == 0 && (magic == MAGIC_LE || magic == MAGIC_BE) {
            return Verdict::Intact { frames: 0 };
        }
        // SQLite ignores a log whose header does not check out. Harmless only if the log
        // holds no commit at all.
        let commits = (0..frames_in_file).filter(|i| is_commit(log, HEADER + i * frame_size)).count();
        return match commits {
            0 => Verdict::Intact { frames: 0 },
            n => Verdict::Damaged(format!(
                "the log's header is damaged, so SQLite would ignore the whole log: up to {n} committed \
                 transactions lost"
            )),
        };
    }
    let salts = &log[16..24];
    let mut sums = (be32(&log[24..]), be32(&log[28..]));
    let mut valid = 0;
    for i in 0..frames_in_file {
        let at = HEADER + i * frame_size;
        let frame = &log[at..at + frame_size];
        sums = checksum(&frame[..8], big_endian, sums);
        sums = checksum(&frame[FRAME_HEADER..], big_endian, sums);
        if &frame[8..16] != salts || sums != (be32(&frame[16..]), be32(&frame[20..])) {
            break;
        }
        valid += 1;
    }
    // After the first bad frame SQLite reads no further. Frames of this generation beyond it
    // that end a transaction were committed, and would be lost.
    let lost = (valid + 1..frames_in_file)
        .map(|i| HEADER + i * frame_size)
        .filter(|&at| &log[at + 8..at + 16] == salts && is_commit(log, at))
        .count();
    if lost == 0 {
        Verdict::Intact { frames: valid }
    } else {
        Verdict::Damaged(format!(
            "frame {} of the log fails its checksum, and {lost} committed transactions follow it that SQLite \
             would drop",
            valid + 1
        ))
    }
}

/// Whether the frame at `at` ends a transaction (it records the database size after commit).
fn is_commit(log: &[u8], at: usize) -> bool {
    be32(&log[at + 4..]) != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_checksum_is_sqlite_s() {
        // Two words each way: s0 = a + 0, s1 = b + s0.
        let data = [0, 0, 0, 1, 0, 0, 0, 2];
        assert_eq!(checksum(&data, true, (0, 0)), (1, 3));
        assert_eq!(checksum(&data, false, (0, 0)), (1 << 24, (2 << 24) + (1 << 24)));
    }

    #[test]
    fn short_or_empty_logs_are_intact() {
        assert_eq!(inspect(&[]), Verdict::Intact { frames: 0 });
        assert_eq!(inspect(&[0u8; 20]), Verdict::Intact { frames: 0 });
    }
}
