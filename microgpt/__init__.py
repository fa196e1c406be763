"""microgpt on the ESP32: host tool that builds, runs and reports the on-chip trainer."""
