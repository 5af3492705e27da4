//! `GET /api/cameras/<id>/latest` (with `--images-dir`): the image this host's camera `<id>`
//! last captured, as its latest `image_captured` named it (`thumbnail`, else `file_name`).
//!
//! The name comes from an event, so from any producer: it is served only when it is a
//! relative path without `..` whose canonical form (links followed) lies inside the
//! canonical images directory, names a regular file of at most [`MAX_IMAGE_BYTES`], has an
//! image extension and starts with that type's magic bytes. Every other case gets the same
//! `404 {"error":"no image"}`, so that the answer reveals nothing about the file system;
//! the reason goes to the debug log. The file is read once into memory, capped.

use std::fs::File;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use super::ctx::Ctx;
use super::reply::{HttpError, Reply};
use super::request::Request;
use crate::error::quote;

/// The route's path is `PREFIX<id>SUFFIX`.
const PREFIX: &str = "/api/cameras/";
const SUFFIX: &str = "/latest";

/// Largest image served: a camera's full frame is a few MiB; a thumbnail far less.
pub(super) const MAX_IMAGE_BYTES: u64 = 8 * 1024 * 1024;

/// The one body of every refusal but the size cap.
const NO_IMAGE: &str = "no image";

/// Whether `path` is the image route's (whatever its id).
pub(super) fn is_route(path: &str) -> bool {
    path.starts_with(PREFIX) && path.ends_with(SUFFIX) && path.len() > PREFIX.len() + SUFFIX.len()
}

/// The camera id in the route's path: 1 to 18 ASCII digits.
fn camera_of(path: &str) -> Option<i64> {
    let id = path.strip_prefix(PREFIX)?.strip_suffix(SUFFIX)?;
    if id.is_empty() || id.len() > 18 || !id.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    id.parse().ok()
}

/// An image type the route serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Jpeg,
    Png,
    Webp,
    Gif,
    Avif,
}

impl Kind {
    /// By the file name's extension (any case).
    fn of(path: &Path) -> Option<Kind> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        Some(match ext.as_str() {
            "jpg" | "jpeg" => Kind::Jpeg,
            "png" => Kind::Png,
            "webp" => Kind::Webp,
            "gif" => Kind::Gif,
            "avif" => Kind::Avif,
            _ => return None,
        })
    }

    fn content_type(self) -> &'static str {
        match self {
            Kind::Jpeg => "image/jpeg",
            Kind::Png => "image/png",
            Kind::Webp => "image/webp",
            Kind::Gif => "image/gif",
            Kind::Avif => "image/avif",
        }
    }

    /// Whether `head` (the file's first [`MAGIC_BYTES`]) starts as this type's files do.
    fn matches(self, head: &[u8]) -> bool {
        match self {
            Kind::Jpeg => head.starts_with(&[0xFF, 0xD8, 0xFF]),
            Kind::Png => head.starts_with(b"\x89PNG\r\n\x1a\n"),
            Kind::Gif => head.starts_with(b"GIF87a") || head.starts_with(b"GIF89a"),
            Kind::Webp => head.starts_with(b"RIFF") && head.get(8..12) == Some(b"WEBP"),
            // An ISO-BMFF `ftyp` box whose major brand is AVIF's (image or sequence).
            Kind::Avif => {
                head.get(4..8) == Some(b"ftyp")
                    && matches!(head.get(8..12), Some(b"avif" | b"avis"))
            }
        }
    }
}

/// Bytes read to check the type: enough for WebP's and AVIF's headers.
const MAGIC_BYTES: usize = 12;

/// `name` as a path relative to the images directory: only plain components (no `..`,
/// `.`, root, prefix or empty one), no NUL.
fn relative(name: &str) -> Option<&Path> {
    let path = Path::new(name);
    let segments = name
        .split('/')
        .all(|s| !s.is_empty() && s != "." && s != "..");
    let plain = path.components().all(|c| matches!(c, Component::Normal(_)));
    (segments && plain && !name.contains('\0')).then_some(path)
}

/// Why an image is not served.
#[derive(Debug, PartialEq, Eq)]
enum Refusal {
    /// Any reason but the size (the reason goes to the debug log only).
    NoImage(&'static str),
    /// Over the cap.
    TooBig,
}

/// An image file, checked and read.
#[derive(Debug)]
struct Image {
    kind: Kind,
    etag: String,
    /// `None` when the client's tag was current (`304`): not read past its head.
    bytes: Option<Vec<u8>>,
}

/// FNV-1a over (canonical path, device, inode, size, mtime): a new tag for a file replaced
/// or rewritten, without hashing its bytes.
fn tag_of(path: &Path, meta: &std::fs::Metadata) -> String {
    let mut hash = 0xcbf2_9ce4_8422_2325_u64;
    let mut feed = |bytes: &[u8]| {
        for b in bytes {
            hash = (hash ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
    };
    feed(path.as_os_str().as_encoded_bytes());
    for n in [meta.dev(), meta.ino(), meta.size()] {
        feed(&n.to_le_bytes());
    }
    feed(&meta.mtime().to_le_bytes());
    feed(&meta.mtime_nsec().to_le_bytes());
    format!("\"img-{hash:016x}\"")
}

/// Checks and reads the image `name` names inside `dir` (canonical), at most `cap` bytes;
/// `current` says whether a tag is the client's (then the file is not read past its head).
fn load(
    dir: &Path,
    name: &str,
    cap: u64,
    current: impl Fn(&str) -> bool,
) -> Result<Image, Refusal> {
    use Refusal::NoImage;
    let rel = relative(name).ok_or(NoImage("not a plain relative path"))?;
    let kind = Kind::of(rel).ok_or(NoImage("not an image extension"))?;
    let canonical: PathBuf = dir
        .join(rel)
        .canonicalize()
        .map_err(|_| NoImage("missing"))?;
    if !canonical.starts_with(dir) {
        return Err(NoImage("outside the images directory"));
    }
    // Before the open: a FIFO or device would block or never end.
    let meta = std::fs::metadata(&canonical).map_err(|_| NoImage("missing"))?;
    if !meta.is_file() {
        return Err(NoImage("not a regular file"));
    }
    let mut file = File::open(&canonical).map_err(|_| NoImage("cannot be opened"))?;
    // What was opened, which may have been swapped since the checks above (a directory on
    // the way replaced by a link out): its real path, as the kernel knows it, must still be
    // inside. Without /proc the canonical path's check above stands alone.
    if let Ok(opened) = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd()))
        && !opened.starts_with(dir)
    {
        return Err(NoImage("swapped for a file outside the images directory"));
    }
    let meta = file.metadata().map_err(|_| NoImage("cannot be read"))?;
    if !meta.is_file() {
        return Err(NoImage("not a regular file"));
    }
    if meta.len() > cap {
        return Err(Refusal::TooBig);
    }
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0).min(1 << 20));
    (&mut file)
        .take(MAGIC_BYTES as u64)
        .read_to_end(&mut bytes)
        .map_err(|_| NoImage("cannot be read"))?;
    if !kind.matches(&bytes) {
        return Err(NoImage("its bytes are not of its type"));
    }
    let etag = tag_of(&canonical, &meta);
    if current(&etag) {
        return Ok(Image {
            kind,
            etag,
            bytes: None,
        });
    }
    // One more byte than the cap: a file that grew since its size was read is refused.
    file.take((cap + 1).saturating_sub(bytes.len() as u64))
        .read_to_end(&mut bytes)
        .map_err(|_| NoImage("cannot be read"))?;
    if bytes.len() as u64 > cap {
        return Err(Refusal::TooBig);
    }
    Ok(Image {
        kind,
        etag,
        bytes: Some(bytes),
    })
}

fn no_image() -> Reply {
    HttpError::new(404, NO_IMAGE).into_reply()
}

/// `GET` (and `HEAD`) `/api/cameras/<id>/latest`: only when `--images-dir` is set.
pub(super) fn latest(rq: &Request<'_>, ctx: &Ctx) -> Reply {
    let Some(dir) = &ctx.config.images_dir else {
        return no_image();
    };
    let refuse = |why: &str| {
        log::debug!("{} {}: no image: {why}", rq.method, rq.target);
        no_image()
    };
    // Another host's images are on that host.
    if rq.query_value("host").is_some() {
        return refuse("asked for another host");
    }
    let Some(camera) = camera_of(&rq.path) else {
        return refuse("not a camera id");
    };
    let Some(snap) = ctx.cache.get() else {
        return HttpError::new(503, "state not loaded yet")
            .with_header("Retry-After", "1")
            .into_reply();
    };
    let Some((name, _seq)) = snap.images.get(&camera) else {
        return refuse("no local camera with an image");
    };
    let current = |tag: &str| {
        rq.header("If-None-Match")
            .is_some_and(|v| v.split(',').any(|t| t.trim() == tag))
    };
    let image = match load(dir, name, MAX_IMAGE_BYTES, current) {
        Ok(image) => image,
        Err(Refusal::NoImage(why)) => {
            return refuse(&format!("{}: {why}", quote(name)));
        }
        Err(Refusal::TooBig) => {
            log::debug!(
                "{} {}: {} is over {MAX_IMAGE_BYTES} bytes",
                rq.method,
                rq.target,
                quote(name)
            );
            return HttpError::new(413, "image too large").into_reply();
        }
    };
    let reply = match image.bytes {
        None => Reply::empty(304),
        Some(bytes) => Reply::bytes(200, image.kind.content_type(), bytes)
            .with_header("X-Content-Type-Options", "nosniff"),
    };
    reply
        .with_header("ETag", image.etag)
        .with_header("Cache-Control", "no-cache")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_route_takes_a_numeric_camera_id_only() {
        assert_eq!(camera_of("/api/cameras/1/latest"), Some(1));
        assert_eq!(camera_of("/api/cameras/0042/latest"), Some(42));
        for bad in [
            "/api/cameras//latest",
            "/api/cameras/-1/latest",
            "/api/cameras/1a/latest",
            "/api/cameras/1/2/latest",
            "/api/cameras/9999999999999999999/latest",
            "/api/cameras/1/latest/",
            "/api/cameras/1",
        ] {
            assert_eq!(camera_of(bad), None, "{bad}");
        }
        assert!(is_route("/api/cameras/x/latest"));
        assert!(!is_route("/api/cameras/latest"));
        assert!(!is_route("/api/state"));
    }

    #[test]
    fn only_plain_relative_names_are_joined() {
        for good in [
            "a.jpg",
            "camera-1/day-001/img_000042.jpg",
            "a..b.jpg",
            "..a.jpg",
        ] {
            assert_eq!(relative(good), Some(Path::new(good)), "{good}");
        }
        for bad in [
            "",
            "/etc/passwd",
            "../a.jpg",
            "camera-1/../../a.jpg",
            "./a.jpg",
            "a/./b.jpg",
            "a/..",
            "..",
            "/",
            "a\0b.jpg",
            "a//b.jpg",
            "a/",
        ] {
            assert_eq!(relative(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn types_follow_the_extension_and_must_match_the_magic() {
        let kind = |n: &str| Kind::of(Path::new(n));
        assert_eq!(kind("a.JPG"), Some(Kind::Jpeg));
        assert_eq!(kind("a.jpeg").map(Kind::content_type), Some("image/jpeg"));
        assert_eq!(kind("a.png").map(Kind::content_type), Some("image/png"));
        assert_eq!(kind("a.webp").map(Kind::content_type), Some("image/webp"));
        assert_eq!(kind("a.gif").map(Kind::content_type), Some("image/gif"));
        assert_eq!(kind("a.avif").map(Kind::content_type), Some("image/avif"));
        for bad in ["a.txt", "a", "a.jpg.sh", "a.svg", ".jpg"] {
            assert_eq!(kind(bad), None, "{bad}");
        }
        assert!(Kind::Jpeg.matches(&[0xFF, 0xD8, 0xFF, 0xE0]));
        assert!(!Kind::Jpeg.matches(b"root:x:0:0"));
        assert!(Kind::Png.matches(b"\x89PNG\r\n\x1a\n\0\0\0\x0d"));
        assert!(Kind::Gif.matches(b"GIF89a\x01\0"));
        assert!(Kind::Webp.matches(b"RIFF\x10\0\0\0WEBPVP8 "));
        assert!(!Kind::Webp.matches(b"RIFF\x10\0\0\0WAVE"));
        assert!(Kind::Avif.matches(b"\0\0\0\x20ftypavif"));
        assert!(!Kind::Avif.matches(b"\0\0\0\x20ftypisom"));
        assert!(!Kind::Png.matches(b""));
    }

    const JPEG: &[u8] = &[
        0xFF, 0xD8, 0xFF, 0xE0, 0, 0x10, b'J', b'F', b'I', b'F', 0, 1, 0xFF, 0xD9,
    ];

    #[test]
    fn files_are_read_checked_and_capped() {
        let root = tempfile::tempdir().expect("temp dir");
        let dir = root.path().join("images");
        std::fs::create_dir(&dir).expect("images dir");
        let dir = dir.canonicalize().expect("canonical");
        std::fs::write(dir.join("a.jpg"), JPEG).expect("write");
        std::fs::write(dir.join("big.jpg"), [JPEG, &[0; 64]].concat()).expect("write");
        std::fs::write(dir.join("fake.jpg"), b"not a jpeg at all").expect("write");
        std::fs::write(root.path().join("out.jpg"), JPEG).expect("write");
        std::os::unix::fs::symlink(root.path().join("out.jpg"), dir.join("out.jpg"))
            .expect("link out");
        std::os::unix::fs::symlink(dir.join("a.jpg"), dir.join("in.jpg")).expect("link in");
        std::fs::create_dir(dir.join("d.jpg")).expect("a directory");
        let never = |_: &str| false;
        let got = load(&dir, "a.jpg", 1024, never).expect("served");
        assert_eq!(got.bytes.as_deref(), Some(JPEG));
        assert_eq!(got.kind, Kind::Jpeg);
        let linked = load(&dir, "in.jpg", 1024, never).expect("a link inside is fine");
        assert_eq!(linked.etag, got.etag, "the same file");
        let fresh = load(&dir, "a.jpg", 1024, |t| t == got.etag).expect("current");
        assert!(fresh.bytes.is_none());
        assert_eq!(
            load(&dir, "big.jpg", 20, never).err(),
            Some(Refusal::TooBig)
        );
        for bad in ["out.jpg", "fake.jpg", "gone.jpg", "d.jpg", "../out.jpg"] {
            assert!(
                matches!(load(&dir, bad, 1024, never), Err(Refusal::NoImage(_))),
                "{bad}"
            );
        }
        let absolute = root.path().join("out.jpg");
        let absolute = absolute.to_str().expect("UTF-8");
        assert!(matches!(
            load(&dir, absolute, 1024, never),
            Err(Refusal::NoImage(_))
        ));
        std::fs::write(dir.join("a.jpg"), [JPEG, JPEG].concat()).expect("rewrite");
        let again = load(&dir, "a.jpg", 1024, never).expect("served");
        assert_ne!(again.etag, got.etag, "a rewritten file has a new tag");
    }
}
