"""Protocol profiles shipped with msfollowup (TOML data, read by msfollowup.profiles).

This folder is data, not code: sites copy a file into their own `[validation] protocols_dir` to change
a limit or add a profile. See README.md here for the file format.
"""
