//! `thin_delta` and `thin_dump` XML (thin-provisioning-tools 0.9) as block ranges.
//!
//! Both tools read a thin pool's metadata; on a live pool they must read a metadata
//! snapshot (`dmsetup message <vg>-<pool>-tpool 0 reserve_metadata_snap`, the tool with
//! `-m`, then `release_metadata_snap`, always, since only one can be held). That dance
//! belongs to the `exec` side; this module only reads the XML:
//!
//! ```text
//! thin_delta -m [--verbose] --snap1 <thin_id> --snap2 <thin_id> /dev/mapper/<vg>-<pool>_tmeta
//! thin_dump -m /dev/mapper/<vg>-<pool>_tmeta
//! ```
//!
//! Units: every position and length in the XML is in **pool data blocks**;
//! `data_block_size` is in 512-byte sectors (128 = 64 KiB, the default chunk size).
//! `begin`/`origin_begin` are offsets in the thin device (virtual), `data_begin` are
//! offsets in the pool's data device (physical).
//!
//! Invariants of parsed values: `data_block_size` is non-zero and the byte offset of the
//! end of every range fits in a `u64`, so the `bytes` helpers cannot overflow; a
//! device's mappings add up to its `mapped_blocks`.

use std::ops::Range;

use quick_xml::events::{BytesStart, Event};
use quick_xml::reader::Reader;

/// Why the XML could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ThinXmlError {
    /// Malformed XML.
    #[error("{tool} output: malformed XML at byte {position}")]
    Xml {
        /// `thin_delta` or `thin_dump`.
        tool: &'static str,
        /// Byte offset in the input.
        position: u64,
        /// The XML error.
        #[source]
        source: quick_xml::Error,
    },
    /// A required attribute is absent.
    #[error("{tool} output: <{element}> has no `{attribute}` attribute")]
    MissingAttribute {
        /// `thin_delta` or `thin_dump`.
        tool: &'static str,
        /// Element name.
        element: String,
        /// Attribute name.
        attribute: &'static str,
    },
    /// An attribute value that does not parse or is out of range.
    #[error("{tool} output: <{element} {attribute}={value:?}>: {problem}")]
    BadValue {
        /// `thin_delta` or `thin_dump`.
        tool: &'static str,
        /// Element name.
        element: String,
        /// Attribute name.
        attribute: &'static str,
        /// The raw value.
        value: String,
        /// What was expected.
        problem: &'static str,
    },
    /// Well-formed XML that is not the tool's layout.
    #[error("{tool} output: {problem}")]
    Layout {
        /// `thin_delta` or `thin_dump`.
        tool: &'static str,
        /// What is wrong.
        problem: String,
    },
}

/// How a range compares between the two thin devices of a `thin_delta`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeltaKind {
    /// Mapped in both to the same data blocks: unchanged.
    Same,
    /// Mapped in both, to different data blocks: changed.
    Different,
    /// Mapped only in the left (`--snap1`) device: discarded since.
    LeftOnly,
    /// Mapped only in the right (`--snap2`) device: written since.
    RightOnly,
}

/// One range of a `thin_delta`, in data blocks of the thin devices' address space.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeltaRange {
    /// How the two devices compare here.
    pub kind: DeltaKind,
    /// First virtual block.
    pub begin: u64,
    /// Number of blocks.
    pub length: u64,
    /// First data block in the left device (`--verbose` only; `Same` and `LeftOnly`
    /// and `Different`).
    pub left_data_begin: Option<u64>,
    /// First data block in the right device (`--verbose` only).
    pub right_data_begin: Option<u64>,
}

impl DeltaRange {
    /// The range in virtual blocks.
    pub fn blocks(&self) -> Range<u64> {
        self.begin..self.begin + self.length
    }

    /// The range in bytes of the thin device, given [`ThinDelta::block_bytes`].
    pub fn bytes(&self, block_bytes: u64) -> Range<u64> {
        self.begin * block_bytes..(self.begin + self.length) * block_bytes
    }
}

/// A parsed `thin_delta` (plain or `--verbose`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ThinDelta {
    /// Pool data block size in 512-byte sectors.
    pub data_block_size: u64,
    /// Thin id of the left device (`--snap1`).
    pub left: u64,
    /// Thin id of the right device (`--snap2`).
    pub right: u64,
    /// Mapped ranges in the order given; unmapped-in-both ranges are omitted by the tool.
    pub ranges: Vec<DeltaRange>,
}

impl ThinDelta {
    /// Bytes per data block.
    pub fn block_bytes(&self) -> u64 {
        self.data_block_size * 512
    }

    /// The ranges that an incremental copy from left to right must carry (all but
    /// [`DeltaKind::Same`]; `LeftOnly` ranges read as zeroes on the right).
    pub fn changed(&self) -> impl Iterator<Item = &DeltaRange> {
        self.ranges.iter().filter(|r| r.kind != DeltaKind::Same)
    }
}

/// A run of blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockRange {
    /// First block.
    pub begin: u64,
    /// Number of blocks.
    pub length: u64,
}

impl BlockRange {
    /// The range in bytes, given the pool's bytes per block.
    pub fn bytes(&self, block_bytes: u64) -> Range<u64> {
        self.begin * block_bytes..(self.begin + self.length) * block_bytes
    }
}

/// One run of mapped blocks of a thin device in a `thin_dump`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mapping {
    /// First virtual block in the thin device.
    pub origin_begin: u64,
    /// First block in the pool's data device.
    pub data_begin: u64,
    /// Number of blocks (1 for a `<single_mapping>`).
    pub length: u64,
    /// The pool time at which the blocks were mapped.
    pub time: u64,
}

/// One thin device in a `thin_dump`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ThinDevice {
    /// The thin id (`lvs -o thin_id`).
    pub dev_id: u32,
    /// Mapped blocks, as the tool counts them.
    pub mapped_blocks: u64,
    /// Transaction id at creation.
    pub transaction: u64,
    /// Pool time at creation.
    pub creation_time: u64,
    /// Pool time of the last snapshot taken of or from it.
    pub snap_time: u64,
    /// Mapped runs, in ascending virtual order.
    pub mappings: Vec<Mapping>,
}

impl ThinDevice {
    /// Bytes mapped (allocated) in the pool for this device.
    pub fn mapped_bytes(&self, block_bytes: u64) -> u64 {
        self.mapped_blocks * block_bytes
    }

    /// The mapped virtual ranges, adjacent runs merged.
    pub fn mapped_ranges(&self) -> Vec<BlockRange> {
        let mut out: Vec<BlockRange> = Vec::new();
        for m in &self.mappings {
            match out.last_mut() {
                Some(last) if last.begin + last.length == m.origin_begin => last.length += m.length,
                _ => out.push(BlockRange {
                    begin: m.origin_begin,
                    length: m.length,
                }),
            }
        }
        out
    }

    /// The data block behind virtual block `block`, if mapped.
    fn data_block(&self, block: u64) -> Option<u64> {
        let i = self
            .mappings
            .partition_point(|m| m.origin_begin + m.length <= block);
        self.mappings
            .get(i)
            .filter(|m| m.origin_begin <= block)
            .map(|m| m.data_begin + (block - m.origin_begin))
    }
}

/// A parsed `thin_dump`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ThinDump {
    /// Pool uuid (often empty).
    pub uuid: String,
    /// Pool time.
    pub time: u64,
    /// Pool transaction id.
    pub transaction: u64,
    /// Data block size in 512-byte sectors.
    pub data_block_size: u64,
    /// Size of the pool's data device in blocks.
    pub nr_data_blocks: u64,
    /// The thin devices in the pool.
    pub devices: Vec<ThinDevice>,
}

impl ThinDump {
    /// Bytes per data block.
    pub fn block_bytes(&self) -> u64 {
        self.data_block_size * 512
    }

    /// The device with thin id `dev_id`.
    pub fn device(&self, dev_id: u32) -> Option<&ThinDevice> {
        self.devices.iter().find(|d| d.dev_id == dev_id)
    }
}

/// The virtual ranges where `b` differs from `a`: mapped in only one of them, or mapped
/// to different data blocks. Computed from two `thin_dump` devices, this is what
/// `thin_delta` reports as everything but `same`, with adjacent ranges merged.
pub fn changed_between(a: &ThinDevice, b: &ThinDevice) -> Vec<BlockRange> {
    // Every mapping edge of either device starts an elementary segment in which both
    // devices are either unmapped or linearly mapped, so comparing the segment's
    // first block decides the whole segment.
    let mut edges: Vec<u64> = a
        .mappings
        .iter()
        .chain(&b.mappings)
        .flat_map(|m| [m.origin_begin, m.origin_begin + m.length])
        .collect();
    edges.sort_unstable();
    edges.dedup();
    let mut out: Vec<BlockRange> = Vec::new();
    for w in edges.windows(2) {
        let (start, end) = (w[0], w[1]);
        let (da, db) = (a.data_block(start), b.data_block(start));
        if da == db {
            continue;
        }
        match out.last_mut() {
            Some(last) if last.begin + last.length == start => last.length += end - start,
            _ => out.push(BlockRange {
                begin: start,
                length: end - start,
            }),
        }
    }
    out
}

/// Attribute access on one element, with errors naming tool, element and attribute.
struct Attrs<'a> {
    tool: &'static str,
    element: String,
    start: &'a BytesStart<'a>,
}

impl Attrs<'_> {
    fn raw(&self, attribute: &'static str) -> Result<Option<String>, ThinXmlError> {
        match self.start.try_get_attribute(attribute) {
            Ok(None) => Ok(None),
            Ok(Some(a)) => a
                .normalized_value(quick_xml::XmlVersion::Implicit1_0)
                .map(|v| Some(v.into_owned()))
                .map_err(|_| self.bad(attribute, "?", "not a valid attribute value")),
            Err(_) => Err(self.bad(attribute, "?", "not a valid attribute")),
        }
    }

    fn string(&self, attribute: &'static str) -> Result<String, ThinXmlError> {
        self.raw(attribute)?
            .ok_or_else(|| ThinXmlError::MissingAttribute {
                tool: self.tool,
                element: self.element.clone(),
                attribute,
            })
    }

    fn num<T: std::str::FromStr>(&self, attribute: &'static str) -> Result<T, ThinXmlError> {
        let v = self.string(attribute)?;
        v.parse()
            .map_err(|_| self.bad(attribute, &v, "expected a non-negative integer"))
    }

    fn bad(&self, attribute: &'static str, value: &str, problem: &'static str) -> ThinXmlError {
        ThinXmlError::BadValue {
            tool: self.tool,
            element: self.element.clone(),
            attribute,
            value: value.to_owned(),
            problem,
        }
    }
}

/// An XML element opening (`<a ...>` is `Open(attrs, true)`, `<a .../>` is
/// `Open(attrs, false)`) or closing (`</a>`).
enum Tag<'a> {
    Open(&'a Attrs<'a>, bool),
    Close(&'a str),
}

/// Walks the XML, calling `f` for every element opened or closed.
fn walk(
    tool: &'static str,
    xml: &[u8],
    mut f: impl FnMut(Tag<'_>) -> Result<(), ThinXmlError>,
) -> Result<(), ThinXmlError> {
    let mut reader = Reader::from_reader(xml);
    loop {
        let position = reader.buffer_position();
        let event = reader.read_event().map_err(|source| ThinXmlError::Xml {
            tool,
            position,
            source,
        })?;
        match event {
            Event::Start(ref s) | Event::Empty(ref s) => {
                let element = String::from_utf8_lossy(s.local_name().as_ref()).into_owned();
                let attrs = Attrs {
                    tool,
                    element,
                    start: s,
                };
                f(Tag::Open(&attrs, matches!(event, Event::Start(_))))?;
            }
            Event::End(ref e) => f(Tag::Close(&String::from_utf8_lossy(
                e.local_name().as_ref(),
            )))?,
            Event::Eof => return Ok(()),
            _ => {}
        }
    }
}

fn layout(tool: &'static str, problem: impl Into<String>) -> ThinXmlError {
    ThinXmlError::Layout {
        tool,
        problem: problem.into(),
    }
}

fn delta_kind(name: &str) -> Option<DeltaKind> {
    match name {
        "same" => Some(DeltaKind::Same),
        "different" => Some(DeltaKind::Different),
        "left_only" => Some(DeltaKind::LeftOnly),
        "right_only" => Some(DeltaKind::RightOnly),
        _ => None,
    }
}

/// Checks that `block_size` is usable and that `(begin + length) * block bytes` fits.
fn check_end(a: &Attrs<'_>, begin: u64, length: u64, block_size: u64) -> Result<(), ThinXmlError> {
    begin
        .checked_add(length)
        .and_then(|end| end.checked_mul(block_size * 512))
        .map(|_| ())
        .ok_or_else(|| {
            a.bad(
                "length",
                &length.to_string(),
                "range ends beyond 2^64 bytes",
            )
        })
}

fn data_block_size(a: &Attrs<'_>) -> Result<u64, ThinXmlError> {
    let size: u64 = a.num("data_block_size")?;
    // dm-thin allows 128 sectors (64 KiB) to 2097152 (1 GiB)
    if size == 0 || size > 1 << 21 {
        return Err(a.bad(
            "data_block_size",
            &size.to_string(),
            "expected 1..=2097152 sectors",
        ));
    }
    Ok(size)
}

/// Parses `thin_delta` output, plain or `--verbose`.
pub fn parse_delta(xml: &[u8]) -> Result<ThinDelta, ThinXmlError> {
    const TOOL: &str = "thin_delta";
    let mut block_size = None;
    let mut sides = None;
    let mut open_kind: Option<DeltaKind> = None;
    let mut ranges = Vec::new();
    walk(TOOL, xml, |tag| {
        match tag {
            Tag::Close(name) => {
                if delta_kind(name).is_some() {
                    open_kind = None;
                }
            }
            Tag::Open(a, is_start) => match (a.element.as_str(), delta_kind(&a.element)) {
                ("superblock", _) => block_size = Some(data_block_size(a)?),
                ("diff", _) => sides = Some((a.num("left")?, a.num("right")?)),
                // verbose: <different> ... <range .../> ... </different>
                (_, Some(kind)) if is_start => open_kind = Some(kind),
                // plain: <different begin=".." length=".."/>
                (_, Some(kind)) => ranges.push(delta_range(a, kind, block_size, false)?),
                ("range", None) => {
                    let kind = open_kind
                        .ok_or_else(|| layout(TOOL, "<range> outside <same>/<different>/..."))?;
                    ranges.push(delta_range(a, kind, block_size, true)?);
                }
                (other, None) => return Err(layout(TOOL, format!("unexpected <{other}>"))),
            },
        }
        Ok(())
    })?;
    let data_block_size = block_size.ok_or_else(|| layout(TOOL, "no <superblock>"))?;
    let (left, right) = sides.ok_or_else(|| layout(TOOL, "no <diff left=.. right=..>"))?;
    Ok(ThinDelta {
        data_block_size,
        left,
        right,
        ranges,
    })
}

fn delta_range(
    a: &Attrs<'_>,
    kind: DeltaKind,
    block_size: Option<u64>,
    verbose: bool,
) -> Result<DeltaRange, ThinXmlError> {
    let block_size =
        block_size.ok_or_else(|| layout("thin_delta", "a range before <superblock>"))?;
    let begin = a.num("begin")?;
    let length = a.num("length")?;
    check_end(a, begin, length, block_size)?;
    let (left_data_begin, right_data_begin) = match (verbose, kind) {
        (false, _) => (None, None),
        (true, DeltaKind::Same) => {
            let d = a.num("data_begin")?;
            (Some(d), Some(d))
        }
        (true, DeltaKind::Different) => (
            Some(a.num("left_data_begin")?),
            Some(a.num("right_data_begin")?),
        ),
        (true, DeltaKind::LeftOnly) => (Some(a.num("data_begin")?), None),
        (true, DeltaKind::RightOnly) => (None, Some(a.num("data_begin")?)),
    };
    Ok(DeltaRange {
        kind,
        begin,
        length,
        left_data_begin,
        right_data_begin,
    })
}

/// Parses `thin_dump` output (the XML format; `--format human_readable` is not).
pub fn parse_dump(xml: &[u8]) -> Result<ThinDump, ThinXmlError> {
    const TOOL: &str = "thin_dump";
    let mut dump: Option<ThinDump> = None;
    let mut device: Option<ThinDevice> = None;
    walk(TOOL, xml, |tag| {
        match tag {
            Tag::Open(a, _) => match a.element.as_str() {
                "superblock" => {
                    dump = Some(ThinDump {
                        uuid: a.raw("uuid")?.unwrap_or_default(),
                        time: a.num("time")?,
                        transaction: a.num("transaction")?,
                        data_block_size: data_block_size(a)?,
                        nr_data_blocks: a.num("nr_data_blocks")?,
                        devices: Vec::new(),
                    });
                }
                "device" => {
                    device = Some(ThinDevice {
                        dev_id: a.num("dev_id")?,
                        mapped_blocks: a.num("mapped_blocks")?,
                        transaction: a.num("transaction")?,
                        creation_time: a.num("creation_time")?,
                        snap_time: a.num("snap_time")?,
                        mappings: Vec::new(),
                    });
                }
                "range_mapping" | "single_mapping" => {
                    let block_size = dump
                        .as_ref()
                        .map(|d| d.data_block_size)
                        .ok_or_else(|| layout(TOOL, "a mapping before <superblock>"))?;
                    let dev = device
                        .as_mut()
                        .ok_or_else(|| layout(TOOL, "a mapping outside <device>"))?;
                    let m = if a.element == "range_mapping" {
                        Mapping {
                            origin_begin: a.num("origin_begin")?,
                            data_begin: a.num("data_begin")?,
                            length: a.num("length")?,
                            time: a.num("time")?,
                        }
                    } else {
                        Mapping {
                            origin_begin: a.num("origin_block")?,
                            data_begin: a.num("data_block")?,
                            length: 1,
                            time: a.num("time")?,
                        }
                    };
                    check_end(a, m.origin_begin, m.length, block_size)?;
                    check_end(a, m.data_begin, m.length, block_size)?;
                    if dev
                        .mappings
                        .last()
                        .is_some_and(|p| p.origin_begin + p.length > m.origin_begin)
                    {
                        return Err(layout(
                            TOOL,
                            format!(
                                "device {}: mappings overlap or are out of order",
                                dev.dev_id
                            ),
                        ));
                    }
                    dev.mappings.push(m);
                }
                other => return Err(layout(TOOL, format!("unexpected <{other}>"))),
            },
            Tag::Close("device") => {
                let dev = device
                    .take()
                    .ok_or_else(|| layout(TOOL, "</device> without <device>"))?;
                let mapped: u64 = dev.mappings.iter().map(|m| m.length).sum();
                if mapped != dev.mapped_blocks {
                    return Err(layout(
                        TOOL,
                        format!(
                            "device {}: mapped_blocks={} but the mappings cover {mapped}",
                            dev.dev_id, dev.mapped_blocks
                        ),
                    ));
                }
                dump.as_mut()
                    .ok_or_else(|| layout(TOOL, "<device> outside <superblock>"))?
                    .devices
                    .push(dev);
            }
            Tag::Close(_) => {}
        }
        Ok(())
    })?;
    dump.ok_or_else(|| layout(TOOL, "no <superblock>"))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Captured in the VM lab: thin1 got 16 MiB, then snapA (thin id 2); then 1 MiB at
    // offset 0 was overwritten and 4 MiB written at 64 MiB, then snapB (thin id 3).
    const DELTA: &[u8] = include_bytes!("../../tests/fixtures/thin/thin_delta.xml");
    const DELTA_VERBOSE: &[u8] = include_bytes!("../../tests/fixtures/thin/thin_delta_verbose.xml");
    const DUMP: &[u8] = include_bytes!("../../tests/fixtures/thin/thin_dump.xml");

    const MIB: u64 = 1 << 20;

    fn summary(d: &ThinDelta) -> Vec<(DeltaKind, u64, u64)> {
        d.ranges
            .iter()
            .map(|r| (r.kind, r.begin, r.length))
            .collect()
    }

    #[test]
    fn plain_delta_ranges_in_blocks_and_bytes() {
        let d = parse_delta(DELTA).unwrap();
        assert_eq!((d.left, d.right, d.data_block_size), (2, 3, 128));
        assert_eq!(d.block_bytes(), 64 * 1024);
        assert_eq!(
            summary(&d),
            [
                (DeltaKind::Different, 0, 16),
                (DeltaKind::Same, 16, 240),
                (DeltaKind::RightOnly, 1024, 64)
            ]
        );
        let changed: Vec<Range<u64>> = d.changed().map(|r| r.bytes(d.block_bytes())).collect();
        assert_eq!(changed, [0..MIB, 64 * MIB..68 * MIB]);
        assert_eq!(d.ranges[2].blocks(), 1024..1088);
        assert!(d.ranges.iter().all(|r| r.left_data_begin.is_none()));
    }

    #[test]
    fn verbose_delta_has_the_same_ranges_plus_data_blocks() {
        let v = parse_delta(DELTA_VERBOSE).unwrap();
        assert_eq!(summary(&v), summary(&parse_delta(DELTA).unwrap()));
        let data: Vec<(Option<u64>, Option<u64>)> = v
            .ranges
            .iter()
            .map(|r| (r.left_data_begin, r.right_data_begin))
            .collect();
        assert_eq!(
            data,
            [
                (Some(0), Some(256)),
                (Some(16), Some(16)),
                (None, Some(272))
            ]
        );
    }

    #[test]
    fn dump_devices_and_mappings() {
        let d = parse_dump(DUMP).unwrap();
        assert_eq!((d.time, d.transaction, d.data_block_size), (2, 3, 128));
        assert_eq!(
            d.devices.iter().map(|x| x.dev_id).collect::<Vec<_>>(),
            [1, 2, 3]
        );
        let snap_a = d.device(2).unwrap();
        assert_eq!(snap_a.mapped_bytes(d.block_bytes()), 16 * MIB);
        assert_eq!(
            snap_a.mappings,
            [Mapping {
                origin_begin: 0,
                data_begin: 0,
                length: 256,
                time: 0
            }]
        );
        let snap_b = d.device(3).unwrap();
        assert_eq!(snap_b.mapped_bytes(d.block_bytes()), 20 * MIB);
        let mapped: Vec<Range<u64>> = snap_b
            .mapped_ranges()
            .iter()
            .map(|r| r.bytes(d.block_bytes()))
            .collect();
        assert_eq!(
            mapped,
            [0..16 * MIB, 64 * MIB..68 * MIB],
            "adjacent runs merged"
        );
        assert!(d.device(9).is_none());
    }

    #[test]
    fn diff_of_two_dumped_devices_matches_thin_delta() {
        let d = parse_dump(DUMP).unwrap();
        let (a, b) = (d.device(2).unwrap(), d.device(3).unwrap());
        let from_dump: Vec<Range<u64>> = changed_between(a, b)
            .iter()
            .map(|r| r.bytes(d.block_bytes()))
            .collect();
        let delta = parse_delta(DELTA).unwrap();
        let from_delta: Vec<Range<u64>> = delta
            .changed()
            .map(|r| r.bytes(delta.block_bytes()))
            .collect();
        assert_eq!(from_dump, from_delta);
        // thin1 (id 1) and snapB (id 3) share every block
        assert_eq!(changed_between(d.device(1).unwrap(), b), []);
        // and the reverse direction changes the same ranges
        assert_eq!(changed_between(b, a), changed_between(a, b));
    }

    #[test]
    fn single_mappings_count_as_one_block() {
        let xml = br#"<superblock uuid="" time="1" transaction="1" data_block_size="128" nr_data_blocks="10">
  <device dev_id="7" mapped_blocks="3" transaction="0" creation_time="0" snap_time="0">
    <single_mapping origin_block="5" data_block="9" time="0"/>
    <range_mapping origin_begin="6" data_begin="1" length="2" time="0"/>
  </device>
</superblock>"#;
        let d = parse_dump(xml).unwrap();
        let dev = d.device(7).unwrap();
        assert_eq!(
            dev.mapped_ranges(),
            [BlockRange {
                begin: 5,
                length: 3
            }]
        );
        assert_eq!(dev.data_block(5), Some(9));
        assert_eq!(dev.data_block(7), Some(2));
        assert_eq!(dev.data_block(8), None);
    }

    #[test]
    fn errors_name_the_element_and_attribute() {
        let no_len = br#"<superblock uuid="" time="2" transaction="4" data_block_size="128" nr_data_blocks="0">
  <diff left="3" right="4"><different begin="0"/></diff></superblock>"#;
        assert_eq!(
            parse_delta(no_len).unwrap_err().to_string(),
            "thin_delta output: <different> has no `length` attribute"
        );
        let bad_begin = br#"<superblock uuid="" time="2" transaction="4" data_block_size="128" nr_data_blocks="0">
  <diff left="3" right="4"><same begin="x" length="1"/></diff></superblock>"#;
        assert_eq!(
            parse_delta(bad_begin).unwrap_err().to_string(),
            r#"thin_delta output: <same begin="x">: expected a non-negative integer"#
        );
        let huge = br#"<superblock uuid="" time="2" transaction="4" data_block_size="128" nr_data_blocks="0">
  <diff left="3" right="4"><same begin="18446744073709551615" length="1"/></diff></superblock>"#;
        assert!(matches!(
            parse_delta(huge),
            Err(ThinXmlError::BadValue {
                attribute: "length",
                ..
            })
        ));
        let zero = br#"<superblock uuid="" time="2" transaction="4" data_block_size="0" nr_data_blocks="0"/>"#;
        assert!(matches!(
            parse_delta(zero),
            Err(ThinXmlError::BadValue {
                attribute: "data_block_size",
                ..
            })
        ));
    }

    #[test]
    fn layout_problems_are_errors_not_panics() {
        assert!(matches!(parse_delta(b""), Err(ThinXmlError::Layout { .. })));
        assert!(matches!(
            parse_delta(b"<superblock"),
            Err(ThinXmlError::Xml { .. })
        ));
        assert!(matches!(
            parse_delta(b"<range begin=\"0\" length=\"1\"/>"),
            Err(ThinXmlError::Layout { .. })
        ));
        let wrong_count = br#"<superblock uuid="" time="1" transaction="1" data_block_size="128" nr_data_blocks="1">
  <device dev_id="1" mapped_blocks="5" transaction="0" creation_time="0" snap_time="0">
    <range_mapping origin_begin="0" data_begin="0" length="2" time="0"/>
  </device></superblock>"#;
        assert_eq!(
            parse_dump(wrong_count).unwrap_err().to_string(),
            "thin_dump output: device 1: mapped_blocks=5 but the mappings cover 2"
        );
        let overlap = br#"<superblock uuid="" time="1" transaction="1" data_block_size="128" nr_data_blocks="1">
  <device dev_id="1" mapped_blocks="4" transaction="0" creation_time="0" snap_time="0">
    <range_mapping origin_begin="0" data_begin="0" length="2" time="0"/>
    <range_mapping origin_begin="1" data_begin="5" length="2" time="0"/>
  </device></superblock>"#;
        assert!(matches!(
            parse_dump(overlap),
            Err(ThinXmlError::Layout { .. })
        ));
    }
}
