//! What instances tell each other on the `draw64` channel, and its text form. Payloads stay
//! far below PostgreSQL's 8,000-byte limit: a notice is a pointer (`u INSTANCE IMAGE GENERATION
//! VERSION`, `c`/`d INSTANCE IMAGE`), a presence heartbeat (`p INSTANCE USERS`) or a goodbye
//! (`q INSTANCE`); the changes themselves are read from the change log.

use crate::domain::ImageId;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Notice {
    /// The image's newest committed version (one per image and batch).
    Updated {
        image: ImageId,
        generation: u64,
        version: u64,
    },
    Created(ImageId),
    Deleted(ImageId),
    /// The sender's connected users (a heartbeat).
    Presence(u64),
    /// The sender is leaving: its users leave the total at once.
    Goodbye,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("malformed notice {0:?}")]
pub struct Malformed(pub String);

/// The payload `instance` sends for `notice`.
pub fn encode(instance: &str, notice: &Notice) -> String {
    match notice {
        Notice::Updated { image, generation, version } => format!("u {instance} {image} {generation} {version}"),
        Notice::Created(image) => format!("c {instance} {image}"),
        Notice::Deleted(image) => format!("d {instance} {image}"),
        Notice::Presence(users) => format!("p {instance} {users}"),
        Notice::Goodbye => format!("q {instance}"),
    }
}

/// The sending instance and its notice.
pub fn decode(payload: &str) -> Result<(&str, Notice), Malformed> {
    let malformed = || Malformed(payload.to_owned());
    let mut parts = payload.split(' ');
    let (kind, from) = (parts.next().ok_or_else(malformed)?, parts.next().ok_or_else(malformed)?);
    let mut image = || parts.next().and_then(|s| ImageId::parse(s).ok()).ok_or_else(malformed);
    let notice = match kind {
        "u" => {
            let image = image()?;
            let mut number = || parts.next().and_then(|s| s.parse::<u64>().ok()).ok_or_else(malformed);
            Notice::Updated { image, generation: number()?, version: number()? }
        }
        "c" => Notice::Created(image()?),
        "d" => Notice::Deleted(image()?),
        "p" => Notice::Presence(parts.next().and_then(|s| s.parse().ok()).ok_or_else(malformed)?),
        "q" => Notice::Goodbye,
        _ => return Err(malformed()),
    };
    if from.is_empty() || parts.next().is_some() {
        return Err(malformed());
    }
    Ok((from, notice))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_notice_round_trips() {
        let image = ImageId::parse("cat-042").unwrap();
        let notices = [
            Notice::Updated { image: image.clone(), generation: u64::MAX >> 1, version: 7 },
            Notice::Created(image.clone()),
            Notice::Deleted(image),
            Notice::Presence(12),
            Notice::Goodbye,
        ];
        for notice in notices {
            let payload = encode("draw64-1-abc", &notice);
            assert!(payload.len() < 8000);
            assert_eq!(decode(&payload), Ok(("draw64-1-abc", notice)), "{payload}");
        }
    }

    #[test]
    fn malformed_payloads_are_refused() {
        for payload in [
            "",
            "u",
            "u me",
            "u me cat 1",
            "u me cat x 2",
            "u me bad/id 1 2",
            "c me",
            "p me many",
            "x me",
            "q me extra",
        ] {
            assert!(decode(payload).is_err(), "{payload:?}");
        }
    }
}
