"""speechkit.metrics (see DESIGN.md). Registrations are imported by speechkit.components, not here."""
