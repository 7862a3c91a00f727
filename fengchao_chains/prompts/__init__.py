"""The instruction library: loads ``prompt_library/*.jinja`` into prompt cards and
ChatPromptTemplates (built in the instruction-library issue)."""
