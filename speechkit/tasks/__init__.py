"""speechkit.tasks (see DESIGN.md). Registrations are imported by speechkit.components, not here."""
