//! Thumbnails: decoded on a background thread with decoder limits, never on a request path.

use crate::config::FilesConfig;
use crate::model::Dimensions;
use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader};
use std::io::BufReader;
use std::path::Path;

/// A made thumbnail.
pub struct Thumbnail {
    /// The original's size (after EXIF orientation).
    pub original: Dimensions,
    pub size: Dimensions,
    pub bytes: Vec<u8>,
    pub mime: &'static str,
}

/// Why no thumbnail was made; `original` when the header could still be read.
pub struct NoThumbnail {
    pub original: Option<Dimensions>,
    pub reason: String,
}

fn format_of(mime: &str) -> Option<ImageFormat> {
    match mime {
        "image/jpeg" => Some(ImageFormat::Jpeg),
        "image/png" => Some(ImageFormat::Png),
        "image/gif" => Some(ImageFormat::Gif),
        "image/webp" => Some(ImageFormat::WebP),
        _ => None,
    }
}

/// Decodes `path` (of type `mime`) within the configured limits and scales it to fit
/// `thumbnail_max_px`. A picture too large for the limits (a decompression bomb) is refused
/// from its header, before any pixel is decoded.
pub fn make(path: &Path, mime: &str, cfg: &FilesConfig) -> Result<Thumbnail, NoThumbnail> {
    let fail = |original, reason: String| NoThumbnail { original, reason };
    let format = format_of(mime).ok_or_else(|| fail(None, format!("{mime} is not thumbnailed")))?;
    let file = std::fs::File::open(path).map_err(|e| fail(None, e.to_string()))?;
    let mut reader = ImageReader::with_format(BufReader::new(file), format);
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(cfg.max_decode_bytes);
    limits.max_image_width = Some(u32::try_from(cfg.max_image_pixels).unwrap_or(u32::MAX));
    limits.max_image_height = Some(u32::try_from(cfg.max_image_pixels).unwrap_or(u32::MAX));
    reader.limits(limits);
    let mut decoder = reader
        .into_decoder()
        .map_err(|e| fail(None, e.to_string()))?;
    let (w, h) = decoder.dimensions();
    let orientation = decoder
        .orientation()
        .unwrap_or(image::metadata::Orientation::NoTransforms);
    let rotated = matches!(
        orientation,
        image::metadata::Orientation::Rotate90
            | image::metadata::Orientation::Rotate270
            | image::metadata::Orientation::Rotate90FlipH
            | image::metadata::Orientation::Rotate270FlipH
    );
    let original = if rotated {
        Dimensions {
            width: h,
            height: w,
        }
    } else {
        Dimensions {
            width: w,
            height: h,
        }
    };
    let pixels = u64::from(w) * u64::from(h);
    if pixels == 0 || pixels > cfg.max_image_pixels {
        return Err(fail(
            Some(original),
            format!("{w}x{h} is over files.max_image_pixels"),
        ));
    }
    if decoder.total_bytes() > cfg.max_decode_bytes {
        return Err(fail(
            Some(original),
            "decoding would need more than files.max_decode_bytes".into(),
        ));
    }
    let mut img =
        DynamicImage::from_decoder(decoder).map_err(|e| fail(Some(original), e.to_string()))?;
    img.apply_orientation(orientation);
    let max = cfg.thumbnail_max_px;
    let thumb = if img.width() <= max && img.height() <= max {
        img
    } else {
        img.thumbnail(max, max)
    };
    let size = Dimensions {
        width: thumb.width(),
        height: thumb.height(),
    };
    let (bytes, mime) = encode(&thumb).map_err(|e| fail(Some(original), e))?;
    Ok(Thumbnail {
        original,
        size,
        bytes,
        mime,
    })
}

/// JPEG for opaque pictures (small), PNG when any pixel is transparent.
fn encode(img: &DynamicImage) -> Result<(Vec<u8>, &'static str), String> {
    let transparent = img.color().has_alpha() && img.to_rgba8().pixels().any(|p| p.0[3] < 255);
    let mut out = std::io::Cursor::new(Vec::new());
    if transparent {
        img.write_to(&mut out, ImageFormat::Png)
            .map_err(|e| e.to_string())?;
        Ok((out.into_inner(), "image/png"))
    } else {
        let rgb = DynamicImage::ImageRgb8(img.to_rgb8());
        let enc = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 80);
        rgb.write_with_encoder(enc).map_err(|e| e.to_string())?;
        Ok((out.into_inner(), "image/jpeg"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> FilesConfig {
        FilesConfig::default()
    }

    #[test]
    fn a_photo_gets_a_small_jpeg_thumbnail() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("photo");
        let img = image::RgbImage::from_fn(1600, 1200, |x, y| {
            image::Rgb([(x % 256) as u8, (y % 256) as u8, ((x + y) % 256) as u8])
        });
        img.save_with_format(&path, ImageFormat::Jpeg)
            .expect("write jpeg");
        let t = make(&path, "image/jpeg", &cfg()).unwrap_or_else(|e| panic!("{}", e.reason));
        assert_eq!((t.original.width, t.original.height), (1600, 1200));
        assert_eq!((t.size.width, t.size.height), (320, 240));
        assert_eq!(t.mime, "image/jpeg");
        let original = std::fs::metadata(&path).expect("meta").len() as usize;
        assert!(
            t.bytes.len() * 4 < original,
            "{} vs {original}",
            t.bytes.len()
        );
    }

    #[test]
    fn transparency_keeps_png() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("logo");
        let img =
            image::RgbaImage::from_fn(400, 100, |x, _| image::Rgba([0, 0, 0, (x % 256) as u8]));
        img.save_with_format(&path, ImageFormat::Png).expect("png");
        let t = make(&path, "image/png", &cfg()).unwrap_or_else(|e| panic!("{}", e.reason));
        assert_eq!(t.mime, "image/png");
        assert_eq!((t.size.width, t.size.height), (320, 80));
    }

    #[test]
    fn pixel_bombs_fail_from_the_header() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("bomb");
        let img = image::GrayImage::new(2000, 2000);
        img.save_with_format(&path, ImageFormat::Png).expect("png");
        let small = FilesConfig {
            max_image_pixels: 1_000_000,
            ..cfg()
        };
        let Err(e) = make(&path, "image/png", &small) else {
            panic!("a 4 Mpx image passed a 1 Mpx limit");
        };
        assert_eq!(e.original.map(|d| d.width), Some(2000));
        let Err(_) = make(&path, "text/plain", &cfg()) else {
            panic!("text got a thumbnail");
        };
    }
}
