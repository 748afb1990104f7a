//! The few values i2kit reads from EC2's XML responses, by element name.

use quick_xml::events::Event;

/// The text of every element named `tag` (local name), in document order.
pub fn all(xml: &str, tag: &str) -> Vec<String> {
    let mut r = quick_xml::Reader::from_str(xml);
    let mut out = Vec::new();
    let mut inside = false;
    let mut text = String::new();
    loop {
        match r.read_event() {
            Ok(Event::Start(e)) if e.local_name().as_ref() == tag.as_bytes() => {
                inside = true;
                text.clear();
            }
            Ok(Event::Text(t)) if inside => {
                if let Ok(s) = t.decode() {
                    text.push_str(&s);
                }
            }
            Ok(Event::GeneralRef(g)) if inside => {
                // &amp; &lt; …: resolve the five XML entities.
                let name = String::from_utf8_lossy(&g).into_owned();
                text.push_str(match name.as_str() {
                    "amp" => "&",
                    "lt" => "<",
                    "gt" => ">",
                    "quot" => "\"",
                    "apos" => "'",
                    _ => "",
                });
            }
            Ok(Event::End(e)) if inside && e.local_name().as_ref() == tag.as_bytes() => {
                inside = false;
                out.push(std::mem::take(&mut text));
            }
            Ok(Event::Eof) | Err(_) => return out,
            _ => {}
        }
    }
}

/// The first element named `tag`.
pub fn first(xml: &str, tag: &str) -> Option<String> {
    all(xml, tag).into_iter().next()
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_elements_and_entities() {
        let x = "<R xmlns=\"http://ec2.amazonaws.com/doc/2016-11-15/\"><imagesSet><item><imageId>ami-1</imageId><name>a &amp; b</name></item><item><imageId>ami-2</imageId></item></imagesSet></R>";
        assert_eq!(super::all(x, "imageId"), ["ami-1", "ami-2"]);
        assert_eq!(super::first(x, "name").as_deref(), Some("a & b"));
        assert_eq!(super::first(x, "nothing"), None);
        assert!(super::all("<unclosed", "x").is_empty());
    }
}
