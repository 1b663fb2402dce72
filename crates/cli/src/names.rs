//! Numeric ids to names, from `/etc/passwd` and `/etc/group` (same `name:x:id:…` layout).
//! A missing or unreadable file simply yields numbers.

use std::collections::HashMap;
use std::fs;

pub const PASSWD_FILE: &str = "/etc/passwd";
pub const GROUP_FILE: &str = "/etc/group";

/// Names by id; unknown ids print as the number.
#[derive(Debug, Default, Clone)]
pub struct Names(HashMap<u32, String>);

impl Names {
    /// Parses `name:password:id:…` lines; malformed lines are skipped. The first name of an
    /// id wins, as with getpwuid.
    pub fn parse(text: &str) -> Self {
        let mut names = HashMap::new();
        for line in text.lines() {
            let mut fields = line.split(':');
            let (Some(name), Some(_), Some(id)) = (fields.next(), fields.next(), fields.next())
            else {
                continue;
            };
            if let (false, Ok(id)) = (name.is_empty(), id.parse::<u32>()) {
                names.entry(id).or_insert_with(|| name.to_owned());
            }
        }
        Names(names)
    }

    /// The name of `id`, or `id` as a number.
    pub fn name(&self, id: u32) -> String {
        self.0.get(&id).cloned().unwrap_or_else(|| id.to_string())
    }
}

/// Reads an id file; an unreadable file gives an empty table (ids then print as numbers).
pub fn load(path: &str) -> Names {
    fs::read_to_string(path)
        .map(|text| Names::parse(&text))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_passwd_and_group_lines() {
        let names = Names::parse(
            "root:x:0:0:root:/root:/bin/bash\n\
             # comment\n\
             \n\
             broken\n\
             nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n\
             alias:x:0:0::/:/bin/sh\n\
             bad:x:notanumber:0::/:\n\
             :x:7:7::/:\n",
        );
        assert_eq!(names.name(0), "root");
        assert_eq!(names.name(65534), "nobody");
        assert_eq!(names.name(7), "7");
        assert_eq!(names.name(1000), "1000");
        let groups = Names::parse("root:x:0:\npidcap:x:998:alice,bob\n");
        assert_eq!(groups.name(998), "pidcap");
    }
}
