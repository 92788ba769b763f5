//! `Reference::parse` on arbitrary UTF-8: it must never panic, and whatever it accepts must
//! have a canonical form that parses back to the same reference.

#![no_main]

use imagegate::reference::Reference;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(input) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(reference) = Reference::parse(input) {
        let again = Reference::parse(reference.canonical()).unwrap_or_else(|e| {
            panic!(
                "{input:?} → {:?} does not parse: {e}",
                reference.canonical()
            )
        });
        assert_eq!(again, reference, "{input:?}");
        assert_eq!(again.name(), reference.name(), "{input:?}");
    }
});
