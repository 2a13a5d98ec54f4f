"""kiln's bottom layer: what every other package may use and which uses none of them (object storage and
local paths alike, the download cache, process groups)."""
