"""Pure models: functions of parameters and arrays (no data or training code here)."""
