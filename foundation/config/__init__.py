"""Config foundations both programs share: YAML with positions, errors with file:line:key, value types (durations,
secrets, file paths), listen addresses, and the remote_write sender's section."""
