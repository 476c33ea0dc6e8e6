-- The viewer's region as the minors law reads it: ASCII spaces trimmed, ASCII letters upper-cased, a blank
-- value is no region at all (NULL: the default rule '*' applies). core/regions.py normalise_region() is the
-- same rule in Python; it also refuses values that are not region codes ('DE\t', 'ＤＥ', '*'), which here stay
-- what they are, match no rule, and region_is_restricted() answers "restricted" for them: the safe side.
-- translate(), not upper(): upper() follows the database's locale, which would read 'xı' as 'XI'.
CREATE OR REPLACE FUNCTION normalise_region(region text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN nullif(translate(btrim(region, ' '), 'abcdefghijklmnopqrstuvwxyz', 'ABCDEFGHIJKLMNOPQRSTUVWXYZ'), '');
REVOKE ALL ON FUNCTION normalise_region(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION normalise_region(text) TO withsense_reader;
