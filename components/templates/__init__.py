"""Templates of the VM backends: cloud-init documents, shell scripts and systemd units.

A package only so that the `.j2` files ship in the wheel; rendered through
`serveform.components._render`.
"""
