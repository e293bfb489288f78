/// Width and height of every image, in cells.
pub const SIDE: usize = 64;
const BYTES: usize = SIDE * SIDE * 3;

/// An RGB colour; each channel 0..=255 by construction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Color {
    pub r: u8,
    pub g: u8,
    pub b: u8,
}

impl Color {
    pub const WHITE: Color = Color { r: 255, g: 255, b: 255 };
}

/// 64×64 RGB pixels stored row-major (row y, then column x), the layout PNG wants, so
/// encoding needs no reshuffle. A new or cleared canvas is white.
#[derive(Clone, PartialEq, Eq)]
pub struct Canvas(Box<[u8; BYTES]>);

impl Default for Canvas {
    fn default() -> Self {
        Self(Box::new([255; BYTES]))
    }
}

impl std::fmt::Debug for Canvas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Canvas({SIDE}x{SIDE})")
    }
}

impl Canvas {
    /// Rebuilds a canvas from its stored bytes; `None` if the length is wrong.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let array: [u8; BYTES] = bytes.try_into().ok()?;
        Some(Self(Box::new(array)))
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0[..]
    }

    /// Sets one cell; coordinates outside the canvas are ignored, as the original does.
    pub fn set(&mut self, x: i64, y: i64, color: Color) {
        if let Some(i) = Self::index(x, y) {
            self.0[i..i + 3].copy_from_slice(&[color.r, color.g, color.b]);
        }
    }

    pub fn get(&self, x: usize, y: usize) -> Color {
        let i = (y * SIDE + x) * 3;
        Color { r: self.0[i], g: self.0[i + 1], b: self.0[i + 2] }
    }

    pub fn clear(&mut self) {
        self.0.fill(255);
    }

    fn index(x: i64, y: i64) -> Option<usize> {
        let side = SIDE as i64;
        ((0..side).contains(&x) && (0..side).contains(&y)).then(|| ((y * side + x) * 3) as usize)
    }

    /// The `/data` representation: 64 arrays (one per x) of 64 `[r,g,b]` (one per y).
    pub fn to_json_columns(&self) -> String {
        use std::fmt::Write;
        let mut out = String::with_capacity(SIDE * SIDE * 14);
        out.push('[');
        for x in 0..SIDE {
            out.push_str(if x == 0 { "[" } else { ",[" });
            for y in 0..SIDE {
                let c = self.get(x, y);
                let sep = if y == 0 { "" } else { "," };
                let _ = write!(out, "{sep}[{},{},{}]", c.r, c.g, c.b);
            }
            out.push(']');
        }
        out.push(']');
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RED: Color = Color { r: 255, g: 0, b: 0 };

    #[test]
    fn new_canvas_is_white() {
        let c = Canvas::default();
        assert!(c.as_bytes().iter().all(|b| *b == 255));
        assert_eq!(c.as_bytes().len(), 64 * 64 * 3);
    }

    #[test]
    fn set_addresses_column_x_row_y_and_skips_outside() {
        let mut c = Canvas::default();
        c.set(3, 1, RED);
        assert_eq!(c.get(3, 1), RED);
        assert_eq!(&c.as_bytes()[(64 + 3) * 3..(64 + 3) * 3 + 3], &[255, 0, 0]);
        let before = c.clone();
        for (x, y) in [(-1, 0), (0, -1), (64, 0), (0, 64), (i64::MAX, i64::MIN)] {
            c.set(x, y, RED);
        }
        assert_eq!(c, before);
        c.set(63, 63, RED);
        assert_eq!(c.get(63, 63), RED);
        c.clear();
        assert_eq!(c, Canvas::default());
    }

    #[test]
    fn json_columns_are_x_first() {
        let mut c = Canvas::default();
        c.set(1, 0, Color { r: 1, g: 2, b: 3 });
        let v: Vec<Vec<[u8; 3]>> = serde_json::from_str(&c.to_json_columns()).unwrap();
        assert_eq!(v.len(), 64);
        assert!(v.iter().all(|col| col.len() == 64));
        assert_eq!(v[1][0], [1, 2, 3]);
        assert_eq!(v[0][1], [255, 255, 255]);
    }

    #[test]
    fn from_bytes_checks_length() {
        assert!(Canvas::from_bytes(&[0; 10]).is_none());
        let c = Canvas::from_bytes(&[7; BYTES]).unwrap();
        assert_eq!(c.get(0, 0), Color { r: 7, g: 7, b: 7 });
    }
}
