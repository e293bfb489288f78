use std::fmt::{self, Write};

use serde::de::{self, Deserialize, Deserializer, IgnoredAny, SeqAccess, Visitor};

use super::{Canvas, Color, Integral};

/// One change to an image, as a client sends it in a PUT body or a WebSocket frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    Draw(Vec<Pixel>),
    ClearCanvas,
}

/// One cell to paint. `x` and `y` are kept as sent, even outside the canvas: the original
/// skips such cells when drawing but relays the command unchanged, and so do we.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pixel {
    pub x: i64,
    pub y: i64,
    pub color: Color,
}

#[derive(Debug, thiserror::Error)]
#[error("invalid command: {0}")]
pub struct CommandError(String);

impl CommandError {
    fn new(msg: impl Into<String>) -> Self {
        Self(msg.into())
    }
}

#[derive(serde::Deserialize)]
struct Body {
    command: RawCommand,
    /// A WebSocket frame's optional W3C trace context: the page's stroke, which the server's
    /// command span continues. Never relayed (events are encoded from the parsed command).
    #[serde(default)]
    traceparent: Option<String>,
}

#[derive(serde::Deserialize)]
struct RawCommand {
    command_type: String,
    #[serde(default)]
    values: Option<Vec<Pixel>>,
}

impl Command {
    /// Parses a whole body, `{"command": {...}}`. Nothing is applied until every pixel has
    /// been checked, so a rejected command changes nothing.
    pub fn parse_json(body: &[u8]) -> Result<Self, CommandError> {
        Self::parse_frame(body).map(|(command, _)| command)
    }

    /// Parses a WebSocket frame: the command and the `traceparent` that came with it, if any.
    pub fn parse_frame(body: &[u8]) -> Result<(Self, Option<String>), CommandError> {
        let body: Body = serde_json::from_slice(body).map_err(|e| CommandError::new(e.to_string()))?;
        Ok((Self::from_raw(body.command)?, body.traceparent))
    }

    fn from_raw(command: RawCommand) -> Result<Self, CommandError> {
        match (command.command_type.as_str(), command.values) {
            ("draw", Some(values)) => Ok(Command::Draw(values)),
            ("draw", None) => Err(CommandError::new("a draw command needs \"values\": [[x, y, r, g, b], ...]")),
            ("clear_canvas", _) => Ok(Command::ClearCanvas),
            (other, _) => {
                Err(CommandError::new(format!("unknown command_type {other:?}; expected \"draw\" or \"clear_canvas\"")))
            }
        }
    }

    pub fn apply(&self, canvas: &mut Canvas) {
        match self {
            Command::Draw(pixels) => pixels.iter().for_each(|p| canvas.set(p.x, p.y, p.color)),
            Command::ClearCanvas => canvas.clear(),
        }
    }

    /// Pixels the command sets on the canvas (a draw's pixels outside it are ignored).
    pub fn pixels_on_canvas(&self) -> u64 {
        match self {
            Command::Draw(px) => px.iter().filter(|p| (0..64).contains(&p.x) && (0..64).contains(&p.y)).count() as u64,
            Command::ClearCanvas => 0,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Command::Draw(_) => "draw",
            Command::ClearCanvas => "clear_canvas",
        }
    }

    /// The command as relayed to subscribers: the same JSON shape the client sent.
    pub fn write_json(&self, out: &mut String) {
        match self {
            Command::ClearCanvas => out.push_str(r#"{"command_type":"clear_canvas"}"#),
            Command::Draw(pixels) => {
                out.push_str(r#"{"command_type":"draw","values":["#);
                for (i, p) in pixels.iter().enumerate() {
                    let sep = if i == 0 { "" } else { "," };
                    let Color { r, g, b } = p.color;
                    let _ = write!(out, "{sep}[{},{},{r},{g},{b}]", p.x, p.y);
                }
                out.push_str("]}");
            }
        }
    }
}

impl<'de> Deserialize<'de> for Pixel {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_seq(PixelVisitor)
    }
}

struct PixelVisitor;

const PIXEL_SHAPE: &str = "a pixel must be exactly 5 integers [x, y, r, g, b]";

impl<'de> Visitor<'de> for PixelVisitor {
    type Value = Pixel;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(PIXEL_SHAPE)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Pixel, A::Error> {
        let mut n = [0i64; 5];
        for (i, slot) in n.iter_mut().enumerate() {
            let Integral(v) =
                seq.next_element()?.ok_or_else(|| de::Error::custom(format!("{PIXEL_SHAPE}; got {i}")))?;
            *slot = v;
        }
        if seq.next_element::<IgnoredAny>()?.is_some() {
            return Err(de::Error::custom(format!("{PIXEL_SHAPE}; got more than 5")));
        }
        let channel = |name: &str, v: i64| {
            u8::try_from(v).map_err(|_| de::Error::custom(format!("{name} value {v} is outside 0..255")))
        };
        Ok(Pixel {
            x: n[0],
            y: n[1],
            color: Color { r: channel("red", n[2])?, g: channel("green", n[3])?, b: channel("blue", n[4])? },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Command, String> {
        Command::parse_json(s.as_bytes()).map_err(|e| e.to_string())
    }

    #[test]
    fn parses_draw_and_clear() {
        let cmd = parse(r#"{"command":{"command_type":"draw","values":[[1,2,3,4,5],[-1,70,0,0,255]]}}"#).unwrap();
        let Command::Draw(px) = &cmd else { panic!() };
        assert_eq!(px[1], Pixel { x: -1, y: 70, color: Color { r: 0, g: 0, b: 255 } });
        assert_eq!(parse(r#"{"command":{"command_type":"clear_canvas"}}"#).unwrap(), Command::ClearCanvas);
        assert_eq!(parse(r#"{"command":{"command_type":"draw","values":[]}}"#).unwrap(), Command::Draw(vec![]));
        // Extra fields are ignored, as the original's model does.
        assert!(parse(r#"{"command":{"command_type":"clear_canvas","x":1},"y":2}"#).is_ok());
    }

    #[test]
    fn rejections_say_what_is_wrong() {
        let cases = [
            (r#"{"command":{"command_type":"draw","values":[[1,2,3,4,256]]}}"#, "blue value 256 is outside 0..255"),
            (r#"{"command":{"command_type":"draw","values":[[1,2,-1,4,5]]}}"#, "red value -1"),
            (r#"{"command":{"command_type":"draw","values":[[1,2,3,4]]}}"#, "exactly 5 integers"),
            (r#"{"command":{"command_type":"draw","values":[[1,2,3,4,5,6]]}}"#, "got more than 5"),
            (r#"{"command":{"command_type":"draw","values":[[1.5,2,3,4,5]]}}"#, "1.5 is not an integer"),
            (r#"{"command":{"command_type":"draw","values":[[1e300,2,3,4,5]]}}"#, "is not an integer"),
            (r#"{"command":{"command_type":"draw","values":[[18446744073709551615,2,3,4,5]]}}"#, "too large"),
            (r#"{"command":{"command_type":"draw","values":[[1,2,3,4,256.0]]}}"#, "blue value 256"),
            (r#"{"command":{"command_type":"draw","values":[["1",2,3,4,5]]}}"#, "string"),
            (r#"{"command":{"command_type":"draw"}}"#, "needs \"values\""),
            (r#"{"command":{"command_type":"erase"}}"#, "unknown command_type \"erase\""),
            (r#"{"command":{}}"#, "missing field `command_type`"),
            (r#"{}"#, "missing field `command`"),
            (r#"{"command":"#, "EOF"),
            ("null", "invalid type"),
        ];
        for (body, expected) in cases {
            let err = parse(body).unwrap_err();
            assert!(err.contains(expected), "{body}: {err}");
        }
    }

    #[test]
    fn integral_numbers_written_with_a_point_are_integers() {
        let cmd = parse(r#"{"command":{"command_type":"draw","values":[[1.0,-2.0,3,4.0,255.0]]}}"#).unwrap();
        assert_eq!(cmd, Command::Draw(vec![Pixel { x: 1, y: -2, color: Color { r: 3, g: 4, b: 255 } }]));
    }

    #[test]
    fn relays_as_sent_and_applies_in_range_only() {
        let body = r#"{"command":{"command_type":"draw","values":[[0,0,1,2,3],[64,0,9,9,9]]}}"#;
        let cmd = parse(body).unwrap();
        let mut json = String::new();
        cmd.write_json(&mut json);
        assert_eq!(json, r#"{"command_type":"draw","values":[[0,0,1,2,3],[64,0,9,9,9]]}"#);
        let mut canvas = Canvas::default();
        cmd.apply(&mut canvas);
        assert_eq!(canvas.get(0, 0), Color { r: 1, g: 2, b: 3 });
        Command::ClearCanvas.apply(&mut canvas);
        assert_eq!(canvas, Canvas::default());
    }
}
