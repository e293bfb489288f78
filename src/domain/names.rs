use super::ImageId;

/// Colour words for readable ids such as `ambre-042`, in the original's French.
const WORDS: &[&str] = &[
    "ambre",
    "azur",
    "beige",
    "blanc",
    "bleu",
    "bordeaux",
    "bronze",
    "carmin",
    "cerise",
    "cobalt",
    "corail",
    "cyan",
    "ebene",
    "emeraude",
    "fuchsia",
    "grenat",
    "indigo",
    "ivoire",
    "jade",
    "jaune",
    "lavande",
    "lilas",
    "magenta",
    "marine",
    "mauve",
    "menthe",
    "noir",
    "ocre",
    "olive",
    "orange",
    "pourpre",
    "prune",
    "rose",
    "rouge",
    "rubis",
    "safran",
    "saphir",
    "sable",
    "sepia",
    "turquoise",
    "vermillon",
    "vert",
    "violet",
];

/// A random `<word>-<NNN>` id; the caller retries while it is taken.
pub fn random_image_id(rng: &mut fastrand::Rng) -> ImageId {
    let word = WORDS[rng.usize(..WORDS.len())];
    ImageId::parse(&format!("{word}-{:03}", rng.u16(..1000))).expect("word list ids are valid")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_word_dash_three_digits() {
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..1000 {
            let id = random_image_id(&mut rng);
            let (word, digits) = id.as_str().rsplit_once('-').unwrap();
            assert!(WORDS.contains(&word));
            assert_eq!(digits.len(), 3);
            assert!(digits.bytes().all(|b| b.is_ascii_digit()));
        }
    }
}
