//! The JSON texts pushed to subscribers, encoded once per event and shared by all of them.
//! Shapes are the original Draw64's, byte for byte apart from whitespace.

use super::{Command, ImageId};

pub fn image_updated(id: &ImageId, command: &Command) -> String {
    let mut out = String::with_capacity(96);
    out.push_str(r#"{"event":{"event_type":"image_updated","image_id":""#);
    out.push_str(id.as_str());
    out.push_str(r#"","command":"#);
    command.write_json(&mut out);
    out.push_str("}}");
    out
}

/// Ids are `[a-zA-Z0-9-]`, so they need no JSON escaping.
pub fn about_image(event_type: &str, id: &ImageId) -> String {
    format!(r#"{{"event":{{"event_type":"{event_type}","image_id":"{id}"}}}}"#)
}

pub fn bare(event_type: &str) -> String {
    format!(r#"{{"event":{{"event_type":"{event_type}"}}}}"#)
}

pub fn user_count_updated(count: u64) -> String {
    format!(r#"{{"event":{{"event_type":"user_count_updated","user_count":{count}}}}}"#)
}

/// Draw64's addition: tells one WebSocket client why its frame was refused.
pub fn error(detail: &str) -> String {
    let detail = serde_json::to_string(detail).unwrap_or_else(|_| "\"error\"".into());
    format!(r#"{{"event":{{"event_type":"error","detail":{detail}}}}}"#)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn v(s: String) -> Value {
        serde_json::from_str(&s).unwrap()
    }

    #[test]
    fn shapes_match_the_original() {
        let id = ImageId::parse("abc").unwrap();
        assert_eq!(
            v(image_updated(&id, &Command::ClearCanvas)),
            json!({"event":{"event_type":"image_updated","image_id":"abc","command":{"command_type":"clear_canvas"}}})
        );
        assert_eq!(
            v(about_image("image_deleted", &id)),
            json!({"event":{"event_type":"image_deleted","image_id":"abc"}})
        );
        assert_eq!(v(bare("user_connected")), json!({"event":{"event_type":"user_connected"}}));
        assert_eq!(v(user_count_updated(3)), json!({"event":{"event_type":"user_count_updated","user_count":3}}));
        assert_eq!(v(error("a \"b\"\n")), json!({"event":{"event_type":"error","detail":"a \"b\"\n"}}));
    }
}
