//! A request body kept as the frames it arrived in, never joined: the scan
//! reads across them and the upstream request sends them as they are, so a
//! large body is held once and never copied by the gateway.

use bytes::{Bytes, BytesMut};
use smallvec::SmallVec;
use std::borrow::Cow;
use std::ops::Range;

/// Frames shorter than this are merged (copied) into a shared piece: a
/// client that sends a body a few bytes at a time would otherwise make the
/// scan and the upstream write walk thousands of tiny pieces.
const SMALL_FRAME: usize = 4 * 1024;
/// How large a piece of merged small frames may grow.
const MERGED_PIECE: usize = 16 * 1024;

/// The pieces of a body or of an upstream request, in order. Most bodies
/// arrive in one frame, and an upstream body is at most that frame in
/// three slices around a spliced model id: both stay inline.
pub type Pieces = SmallVec<[Bytes; 3]>;

/// A request body as a list of buffers.
#[derive(Debug, Clone, Default)]
pub struct BodyPieces {
    pieces: Pieces,
    len: usize,
}

/// Builds a [`BodyPieces`] from frames as they are read.
#[derive(Debug, Default)]
pub struct BodyCollector {
    body: BodyPieces,
    /// Small frames being merged; empty when none are.
    merging: BytesMut,
}

impl BodyCollector {
    /// Appends a frame: kept as it is (no copy), or merged with its
    /// neighbours when it and the previous piece are both small.
    pub fn push(&mut self, frame: Bytes) {
        if frame.is_empty() {
            return;
        }
        let body = &mut self.body;
        body.len += frame.len();
        if frame.len() >= SMALL_FRAME {
            self.close_merge();
            self.body.pieces.push(frame);
            return;
        }
        if self.merging.is_empty() {
            match body.pieces.last() {
                Some(last) if last.len() < SMALL_FRAME => {
                    let last = body.pieces.pop().expect("a last piece");
                    self.merging
                        .reserve(MERGED_PIECE.max(last.len() + frame.len()));
                    self.merging.extend_from_slice(&last);
                }
                // A lone small frame (the usual small body) stays as it is.
                _ => {
                    body.pieces.push(frame);
                    return;
                }
            }
        }
        self.merging.extend_from_slice(&frame);
        if self.merging.len() >= MERGED_PIECE {
            self.close_merge();
        }
    }

    fn close_merge(&mut self) {
        if !self.merging.is_empty() {
            self.body.pieces.push(self.merging.split().freeze());
        }
    }

    /// The whole body, once every frame is pushed.
    pub fn finish(mut self) -> BodyPieces {
        self.close_merge();
        self.body
    }
}

impl BodyPieces {
    /// The body's pieces, in order.
    pub fn pieces(&self) -> &[Bytes] {
        &self.pieces
    }

    /// Total length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The bytes at `span`: borrowed from one piece, or copied when the span
    /// straddles two (only for the few short values the gateway reads).
    pub fn span(&self, span: Range<usize>) -> Cow<'_, [u8]> {
        span_of(&self.pieces, span)
    }

    /// The whole body as pieces (clones share the buffers).
    pub fn to_pieces(&self) -> Pieces {
        self.pieces.clone()
    }

    /// The body with the bytes at `span` replaced by `replacement`: slices
    /// of the same buffers around the new value, nothing copied.
    pub fn spliced(&self, span: Range<usize>, replacement: Bytes) -> Pieces {
        let mut out = Pieces::new();
        let mut base = 0;
        let mut replaced = false;
        for piece in &self.pieces {
            let (start, end) = (base, base + piece.len());
            base = end;
            if start < span.start {
                out.push(piece.slice(..span.start.min(end) - start));
            }
            if !replaced && end >= span.start {
                out.push(replacement.clone());
                replaced = true;
            }
            if end > span.end {
                out.push(piece.slice(span.end.max(start) - start..));
            }
        }
        if !replaced {
            out.push(replacement);
        }
        out.retain(|p| !p.is_empty());
        out
    }
}

/// The bytes at `span` of the concatenation of `pieces`: borrowed when they
/// lie in one piece, copied when they straddle two or more.
pub fn span_of<P: AsRef<[u8]>>(pieces: &[P], span: Range<usize>) -> Cow<'_, [u8]> {
    let mut base = 0;
    let mut out: Option<Vec<u8>> = None;
    for piece in pieces {
        let piece = piece.as_ref();
        let (start, end) = (base, base + piece.len());
        base = end;
        if end <= span.start || piece.is_empty() {
            continue;
        }
        if start >= span.end {
            break;
        }
        let part = &piece[span.start.max(start) - start..span.end.min(end) - start];
        if out.is_none() && span.start >= start && span.end <= end {
            return Cow::Borrowed(part);
        }
        out.get_or_insert_with(|| Vec::with_capacity(span.len()))
            .extend_from_slice(part);
    }
    Cow::Owned(out.unwrap_or_default())
}

impl From<Bytes> for BodyPieces {
    fn from(whole: Bytes) -> Self {
        let mut body = BodyCollector::default();
        body.push(whole);
        body.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body_of(frames: &[&[u8]]) -> BodyPieces {
        let mut body = BodyCollector::default();
        for frame in frames {
            body.push(Bytes::copy_from_slice(frame));
        }
        body.finish()
    }

    fn joined(pieces: &[Bytes]) -> Vec<u8> {
        pieces.concat()
    }

    #[test]
    fn large_frames_are_kept_as_they_are() {
        let big = Bytes::from(vec![b'a'; SMALL_FRAME]);
        let mut collector = BodyCollector::default();
        collector.push(big.clone());
        collector.push(big.clone());
        let body = collector.finish();
        let pieces = body.pieces();
        assert_eq!(pieces.len(), 2);
        assert_eq!(pieces[0].as_ptr(), big.as_ptr(), "not copied");
        assert_eq!(pieces[1].as_ptr(), big.as_ptr());
    }

    #[test]
    fn a_lone_small_frame_is_not_copied() {
        let small = Bytes::from_static(b"{}");
        let body = BodyPieces::from(small.clone());
        assert_eq!(body.pieces()[0].as_ptr(), small.as_ptr());
    }

    #[test]
    fn small_frames_are_merged_into_bounded_pieces() {
        let frames: Vec<Vec<u8>> = (0..40_000u32).map(|i| vec![(i % 251) as u8]).collect();
        let refs: Vec<&[u8]> = frames.iter().map(Vec::as_slice).collect();
        let body = body_of(&refs);
        assert_eq!(body.len(), 40_000);
        let pieces = body.pieces();
        assert!(pieces.len() <= 3, "{} pieces", pieces.len());
        assert_eq!(joined(pieces), refs.concat());
    }

    #[test]
    fn small_frames_between_large_ones_keep_their_order() {
        let big = vec![b'b'; SMALL_FRAME + 1];
        let frames: [&[u8]; 6] = [b"x", b"y", &big, b"z", &big, b"w"];
        let body = body_of(&frames);
        assert_eq!(joined(body.pieces()), frames.concat());
    }

    #[test]
    fn splicing_replaces_only_the_span_wherever_the_pieces_are_cut() {
        let text = b"{\"model\":\"kimi\",\"messages\":[]}";
        let model = 9..15;
        let replacement = Bytes::from_static(b"\"moonshot/kimi-k2\"");
        let mut expected = text[..9].to_vec();
        expected.extend_from_slice(&replacement);
        expected.extend_from_slice(&text[15..]);
        for i in 0..=text.len() {
            for j in i..=text.len() {
                let body = BodyPieces {
                    pieces: [&text[..i], &text[i..j], &text[j..]]
                        .into_iter()
                        .filter(|p| !p.is_empty())
                        .map(Bytes::copy_from_slice)
                        .collect(),
                    len: text.len(),
                };
                let spliced = body.spliced(model.clone(), replacement.clone());
                assert_eq!(joined(&spliced), expected, "cuts at {i},{j}");
                assert!(spliced.iter().all(|p| !p.is_empty()));
                assert_eq!(&*body.span(model.clone()), b"\"kimi\"");
            }
        }
    }

    #[test]
    fn a_one_piece_splice_is_three_slices_of_the_same_buffer() {
        let whole = Bytes::from_static(b"{\"model\":\"kimi\",\"messages\":[]}");
        let body = BodyPieces::from(whole.clone());
        let spliced = body.spliced(9..15, Bytes::from_static(b"\"k2\""));
        assert_eq!(spliced.len(), 3);
        assert!(!spliced.spilled(), "kept inline");
        assert_eq!(spliced[0].as_ptr(), whole.as_ptr());
    }

    #[test]
    fn a_span_is_borrowed_from_one_piece_and_copied_across_two() {
        let pieces: [&[u8]; 3] = [b"{\"model\":\"ki", b"mi\",", b"\"x\":1}"];
        let model = span_of(&pieces, 9..15);
        assert!(matches!(model, Cow::Owned(_)));
        assert_eq!(&*model, b"\"kimi\"");
        let x = span_of(&pieces, 20..21);
        assert!(matches!(x, Cow::Borrowed(_)));
        assert_eq!(&*x, b"1");
        assert_eq!(&*span_of(&pieces, 0..22), pieces.concat());
        assert!(span_of(&pieces, 22..22).is_empty());
    }
}
