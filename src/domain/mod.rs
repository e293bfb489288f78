//! Pure types and rules of Draw64: no I/O, no async, no clocks.
//!
//! Everything a client sends is parsed here into a type that cannot hold an invalid value
//! ("parse, don't validate"), so the layers above never re-check it.

mod canvas;
mod command;
pub mod event;
mod id;
mod integral;
mod names;
mod png;

pub use canvas::{Canvas, Color, SIDE};
pub use command::{Command, CommandError, Pixel};
pub use id::{IdError, ImageId, MAX_ID_LEN};
pub use integral::Integral;
pub use names::random_image_id;
pub use png::encode_png;
pub mod browser;
