use super::{Canvas, SIDE};

/// Encodes a canvas as a 64×64 8-bit RGB PNG.
pub fn encode_png(canvas: &Canvas) -> Vec<u8> {
    let mut out = Vec::with_capacity(2048);
    let mut encoder = png::Encoder::new(&mut out, SIDE as u32, SIDE as u32);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    // Writing to a Vec cannot fail and the data length is fixed by the type.
    let mut writer = encoder.write_header().expect("png header to memory");
    writer.write_image_data(canvas.as_bytes()).expect("png data to memory");
    writer.finish().expect("png end to memory");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Color;

    #[test]
    fn round_trips_through_a_decoder() {
        let mut canvas = Canvas::default();
        canvas.set(5, 9, Color { r: 10, g: 20, b: 30 });
        let bytes = encode_png(&canvas);
        let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
        let mut reader = decoder.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!((info.width, info.height, info.color_type), (64, 64, png::ColorType::Rgb));
        assert_eq!(&buf[..info.buffer_size()], canvas.as_bytes());
    }
}
