"""Measuring speech: pitch, speaking rate, noise, reverberation (`measures`), and the attribute
levels they are binned into (`levels`)."""
