//! Class names.

/// The 1000 ImageNet-1k class names in torchvision's order (`weights.meta["categories"]`).
pub fn imagenet() -> &'static [&'static str] {
    static NAMES: std::sync::OnceLock<Vec<&'static str>> = std::sync::OnceLock::new();
    NAMES.get_or_init(|| include_str!("imagenet_classes.txt").lines().collect())
}

/// The ten Fashion-MNIST classes, in label order.
pub const FASHION_MNIST: [&str; 10] =
    ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"];

/// The class names of a configuration when nothing else names them: ImageNet's for 1000 classes,
/// Fashion-MNIST's for ten classes of one channel, `class N` otherwise.
pub fn for_config(config: &crate::config::VggConfig) -> Vec<String> {
    match (config.num_classes, config.in_channels) {
        (1000, _) => imagenet().iter().map(|s| s.to_string()).collect(),
        (10, 1) => FASHION_MNIST.iter().map(|s| s.to_string()).collect(),
        (n, _) => (0..n).map(|i| format!("class {i}")).collect(),
    }
}

/// Class names from a text file, one per line.
pub fn read(path: &std::path::Path) -> Result<Vec<String>, crate::file::FileError> {
    let bytes = crate::file::read(path)?;
    let text = String::from_utf8(bytes).map_err(|_| crate::file::FileError::Format {
        path: path.display().to_string(),
        what: "not UTF-8 text".into(),
    })?;
    Ok(text.lines().map(str::to_string).collect())
}

#[cfg(test)]
mod tests {
    #[test]
    fn imagenet_has_1000_names_in_torchvision_order() {
        let n = super::imagenet();
        assert_eq!(n.len(), 1000);
        assert_eq!(n[0], "tench");
        assert_eq!(n[281], "tabby");
        assert_eq!(n[999], "toilet tissue");
    }
}
